"""UniSRec plugin, S3Rec in one command, FDSA on text attributes."""

import os

import numpy as np
import torch
import torch.nn.functional as F
from conftest import assert_reproduces, rand_features_config, tiny_config

from recbole_llm import Config, create_dataset, get_model, run_recbole_llm
from recbole_llm.model.sequential_recommender.unisrec import MoEAdaptor
from recbole_llm.utils import data_preparation

ITEM_COLS = {"inter": ["user_id", "item_id", "timestamp"], "item": ["item_id", "categories"]}


uni_config = rand_features_config  # UniSRec over a random feature table


def build(model_name, config_dict):
    config = Config(model=model_name, dataset="tiny", config_dict=config_dict)
    from recbole_llm.quick_start import prepare_artifacts

    prepare_artifacts(config)
    dataset = create_dataset(config)
    train, _, _ = data_preparation(config, dataset)
    return config, train, get_model(model_name)(config, train.dataset)


def test_moe_gate_is_noisy_only_in_training():
    moe = MoEAdaptor(4, 12, 8)
    torch.nn.init.normal_(moe.w_noise)
    x = torch.randn(5, 12)
    moe.eval()
    torch.testing.assert_close(moe(x), moe(x))
    assert torch.allclose(moe.gates(x).sum(-1), torch.ones(5))
    moe.train()
    assert not torch.allclose(moe.gates(x), moe.gates(x))


def test_unisrec_scores_are_scaled_cosines(tiny_data, tmp_path):
    _, train, model = build("UniSRec", uni_config(tiny_data, tmp_path))
    assert not hasattr(model, "item_embedding")  # inductive: text only
    model.eval()
    batch = next(iter(train))
    with torch.no_grad():
        scores = model.full_sort_predict(batch)
        table = F.normalize(model.moe_adaptor(model.plm_embedding), dim=-1)
        states = model.encode_sequence(batch["item_id_list"])
        last = states[torch.arange(len(states)), batch["item_length"] - 1]
        expected = F.normalize(last, dim=-1) @ table.t() / 0.07
    torch.testing.assert_close(scores, expected, rtol=1e-4, atol=1e-4)
    assert scores.abs().max() <= 1 / 0.07 + 1e-3


def test_unisrec_transfer_freezes_the_encoder(tiny_data, tmp_path):
    from recbole_llm.export import export_weights

    source = run_recbole_llm(model="UniSRec", dataset="tiny", config_dict=uni_config(tiny_data, tmp_path, train_stage="transductive_ft"))
    weights = str(tmp_path / "unisrec-weights.pth")
    export_weights(source["model_file"], weights)  # the plain file a pretrained_checkpoint is (weights_only)
    _, _, model = build("UniSRec", uni_config(tiny_data, tmp_path, pretrained_checkpoint=weights, freeze_encoder=True))
    state = torch.load(weights, weights_only=True)["state_dict"]
    name = "trm_encoder.layer.0.multi_head_attention.query.weight"
    assert torch.equal(model.state_dict()[name], state[name])
    assert not any(p.requires_grad for p in model.trm_encoder.parameters())
    assert all(p.requires_grad for p in model.moe_adaptor.parameters())


def test_s3rec_pretrains_and_finetunes_in_one_command(tiny_data, tmp_path):
    config = tiny_config(tiny_data, tmp_path, epochs=1, pretrain_epochs=1, save_step=1, load_col=ITEM_COLS, item_attribute="categories")
    result = run_recbole_llm(model="S3Rec", dataset="tiny", config_dict=config)
    assert result["model_file"].endswith("-finetuned.pth") and os.path.isfile(result["model_file"])
    assert os.path.isfile(result["model_file"].replace("-finetuned.pth", "-pretrained-weights.pth"))
    assert_reproduces(result)


def test_fdsa_uses_text_attributes(tiny_data, tmp_path):
    config = tiny_config(tiny_data, tmp_path, load_col=ITEM_COLS, selected_features=["categories"])
    result = run_recbole_llm(model="FDSA", dataset="tiny", config_dict=config)
    state = torch.load(result["model_file"], weights_only=False)["state_dict"]
    tables = [v for k, v in state.items() if "feature_embed_layer" in k and "token_seq_embedding_table" in k]
    # one embedding per category token of tiny.item (Home, Office_Supplies and six kinds) plus padding
    assert len(tables) == 1 and tables[0].shape[0] == 9
    assert_reproduces(result)


def test_unisrec_export_reproduces_its_scores(tiny_data, tmp_path):
    """Exported users and items give the model's own scores (normalised items next to scaled users)."""
    from recbole_llm.export import export_embeddings, full_histories
    from recbole_llm.llm.features import load_features
    from recbole_llm.quick_start import load_model_file

    result = run_recbole_llm(model="UniSRec", dataset="tiny", config_dict=uni_config(tiny_data, tmp_path, load_col=ITEM_COLS))
    export_embeddings(result["model_file"], str(tmp_path / "out"))
    _, users, _ = load_features(str(tmp_path / "out" / "users"))
    _, items, _ = load_features(str(tmp_path / "out" / "items"))
    assert np.allclose(np.linalg.norm(items, axis=1), 1.0, atol=1e-5)
    config, model, _, _, test = load_model_file(result["model_file"])
    model.eval()
    seq, seq_len = full_histories(test.dataset, config["MAX_ITEM_LIST_LENGTH"])
    with torch.no_grad():
        scores = model.full_sort_predict({"item_id_list": seq[:3], "item_length": seq_len[:3]})[:, 1:]
    np.testing.assert_allclose(users[:3] @ items.T, scores.numpy(), rtol=1e-4, atol=1e-4)
