"""What our model reads, gathered through the project's own paths: quick_start's artifact preparation (features,
PCA companion, teacher), the plugin's dataset and split, the similar-user artifact of LLM-ESR."""

import numpy as np
import torch
import torch.nn.functional as F

from recbole_llm.parity.export import ParityData, check_against_split, dense_sequences, user_sequences_in_time_order


def build_split(model, dataset, config_dict):
    """(config, shared artifact keys, full dataset, train dataset) of our run, the artifacts built once."""
    from recbole_llm.config import Config
    from recbole_llm.quick_start import shared_artifact_keys
    from recbole_llm.utils import create_dataset, data_preparation

    config = Config(model=model, dataset=dataset, config_dict=config_dict)
    shared = shared_artifact_keys(config)
    full = create_dataset(config)
    uid, iid = full.uid_field, full.iid_field
    # read before data_preparation: its build() replaces inter_feat by the augmented rows (each user's first item
    # then appears only inside the history lists)
    inter = full.inter_feat  # a DataFrame until build()
    by_user = user_sequences_in_time_order(np.asarray(inter[uid]), np.asarray(inter[iid]), np.asarray(inter[full.time_field]))
    train, valid, test = data_preparation(config, full)
    rows = {name: (loader._dataset.inter_feat[uid].numpy(), loader._dataset.inter_feat[iid].numpy())
            for name, loader in (("valid", valid), ("test", test))}
    check_against_split(by_user, rows)
    data = ParityData(
        sequences=dense_sequences(by_user, full.user_num - 1),
        n_items=full.item_num - 1,
        user_tokens=[str(t) for t in full.field2id_token[uid]],
        item_tokens=[str(t) for t in full.field2id_token[iid]],
    )
    return config, shared, data, train._dataset


def llmesr_tables(config, train_ds, data):
    """LLM table, its PCA to the hidden width (the ID view's init) and the similar users our LLMESR model uses."""
    from recbole_llm.data.utils import user_sequences
    from recbole_llm.llm.extract import pca_reduce
    from recbole_llm.model.similar_users import ensure_similar_users

    features = train_ds.llm_feature(config["llm_feature"])
    base_name = config["llm_feature_base"] or config["llm_feature"]
    base = train_ds.llm_feature(base_name)
    data.tables["llm"] = features[1:].numpy()
    data.tables["pca"] = pca_reduce(base[1:].numpy(), int(config["hidden_size"]))
    seqs, lens = user_sequences(train_ds)
    sims = ensure_similar_users(config, train_ds, base, base_name, seqs, lens, int(config["llmesr_sim_users"]))
    data.similar = (sims[1:] - 1).clamp(min=0).numpy()
    return data


def llmemb_tables(config, train_ds, data):
    """The frozen LLM table of LLMEmb and its teacher's item table (the width of the item table)."""
    from recbole_llm.model.teacher import load_teacher_table

    data.tables["llm"] = train_ds.llm_feature(config["llm_feature"])[1:].numpy()
    teacher = load_teacher_table(config["teacher_checkpoint"], train_ds, int(config["hidden_size"]))
    data.tables["teacher"] = teacher[1:].numpy()
    return data


def learn_tables(config, train_ds, data):
    """LEARN's content table as our model reads it (L2-normalised rows)."""
    table = F.normalize(train_ds.llm_feature(config["llm_feature"]).float(), dim=-1)
    data.tables["llm"] = table[1:].numpy()
    return data


TABLES = {"llmesr": llmesr_tables, "llmemb": llmemb_tables, "learn": learn_tables}


def gather(method, model, dataset, config_dict):
    """(our Config, shared artifact keys, ParityData with the method's tables) for our run of ``method``."""
    config, shared, data, train_ds = build_split(model, dataset, config_dict)
    with torch.no_grad():
        TABLES[method](config, train_ds, data)
    for name, table in data.tables.items():
        if not np.isfinite(table).all():
            raise ValueError(f"table '{name}' has non-finite values")
    return config, shared, data
