"""LLM-ESR dual-view models, the similar-user artifact, and feature whitening."""

import os
import re

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from conftest import write_tiny_dataset
from test_llmemb import build, llm_config, train_steps, write_features

from recbole_llm import Config
from recbole_llm.llm.extract import ensure_whitened, whiten
from recbole_llm.llm.features import feature_base, find_feature_file, load_features, save_features
from recbole_llm.model.similar_users import SimilarUsersError, ensure_similar_users, nearest_users, similar_users_path

MODELS = ["LLMESRSASRec", "LLMESRGRU4Rec", "LLMESRBERT4Rec"]


def esr_config(tiny_data, tmp_path, **overrides):
    overrides.setdefault("llmesr_alpha", 0.1)
    overrides.setdefault("hidden_size", 16)
    overrides.setdefault("embedding_size", 16)
    return llm_config(tiny_data, tmp_path, **overrides)


# ---- whitening -----------------------------------------------------------------------------------------
@pytest.mark.parametrize("mode", ["pca", "zca"])
def test_whitening_gives_identity_covariance(mode):
    rng = np.random.default_rng(0)
    mixing = rng.normal(size=(8, 8)) * np.array([10, 5, 3, 1, 0.5, 0.2, 0.1, 0.05])
    x = rng.normal(size=(500, 8)) @ mixing + 3.0  # anisotropic, not centred
    white = whiten(x, mode, eps=1e-9).astype(np.float64)
    np.testing.assert_allclose(white.mean(0), 0, atol=1e-5)
    np.testing.assert_allclose(white.T @ white / len(white), np.eye(8), atol=1e-4)
    if mode == "zca":  # ZCA is the whitening closest to the input: still correlated with it column by column
        centred = x - x.mean(0)
        assert all(np.corrcoef(centred[:, j], white[:, j])[0, 1] > 0.1 for j in range(8))
    np.testing.assert_array_equal(whiten(x, "none"), x.astype(np.float32))
    with pytest.raises(ValueError, match="feature_whitening"):
        whiten(x, "pcaa")


def test_whitened_feature_file_is_cached_and_keyed_on_its_source(tiny_data, tmp_path):
    folder = str(tmp_path / "features")
    write_features(folder)
    config = Config(model="LLMEmbSASRec", dataset="tiny", config_dict=llm_config(tiny_data, tmp_path))
    name = ensure_whitened(config, "rand", "zca")
    assert re.fullmatch(r"rand-whitezca-[0-9a-f]{16}", name), name
    base = find_feature_file(config, name)
    _, matrix, meta = load_features(base)
    assert meta["whitening"] == "zca" and meta["whitening_of"] == "rand"
    mtime = os.path.getmtime(base + ".npy")
    assert ensure_whitened(config, "rand", "zca") == name and os.path.getmtime(base + ".npy") == mtime  # reused
    # new source content -> new source key -> built under its own name
    tokens = [f"i{i}" for i in range(30)]
    save_features(feature_base(folder, "tiny", "rand"), tokens, np.ones((30, 12), np.float32) + np.eye(30, 12), {"cache_key": "other"})
    other = ensure_whitened(config, "rand", "zca")
    assert other != name and not np.allclose(load_features(find_feature_file(config, other))[1], matrix)


def test_models_read_the_whitened_table(tiny_data, tmp_path):
    write_features(str(tmp_path / "features"), dim=16)
    config, dataset, _, model = build("LLMESRSASRec", esr_config(tiny_data, tmp_path, feature_whitening="pca"))
    assert config["llm_feature"].startswith("rand-whitepca-") and config["llm_feature_base"] == "rand"
    table = model.item_embedding.llm_embedding.features[1:].double()
    cov = (table - table.mean(0)).T @ (table - table.mean(0)) / len(table)
    torch.testing.assert_close(cov, torch.eye(16, dtype=torch.float64), atol=2e-3, rtol=0)
    with pytest.raises(ValueError, match="feature_whitening"):
        build("LLMESRSASRec", esr_config(tiny_data, tmp_path, feature_whitening="yes"))


# ---- the dual-view models ---------------------------------------------------------------------------------
@pytest.mark.parametrize("model_name", MODELS)
def test_both_views_are_used_in_scoring(tiny_data, tmp_path, model_name):
    write_features(str(tmp_path / "features"), dim=16)
    config, dataset, train, model = build(model_name, esr_config(tiny_data, tmp_path))
    model.eval()
    batch = next(iter(train))
    with torch.no_grad():
        scores = model.full_sort_predict(batch)
        assert scores.shape == (len(batch), dataset.item_num) and torch.isfinite(scores).all()
        # the ID table changes the scores
        model.item_embedding.id_embedding.weight.mul_(1.5)
        model.eval()
        id_changed = model.full_sort_predict(batch)
        assert not torch.allclose(id_changed, scores)
        # the LLM table (through the adapter) changes them too
        model.item_embedding.llm_embedding.features.mul_(1.5)
        model.eval()  # drop the adapted table's eval cache
        assert not torch.allclose(model.full_sort_predict(batch), id_changed)
    # the item table is the concatenation [ID | g(x)]
    table = model.item_embedding.weight
    assert table.size(1) == 32
    torch.testing.assert_close(table[:, :16], model.item_embedding.id_embedding.weight)


@pytest.mark.parametrize("model_name", MODELS)
@pytest.mark.parametrize("train_mode", ["all_positions", "prefix"])
def test_llmesr_trains_a_few_steps(tiny_data, tmp_path, model_name, train_mode):
    write_features(str(tmp_path / "features"), dim=16)
    overrides = {"train_mode": train_mode, "llmesr_item_reg": True, "llmesr_cross_attention": True}
    if model_name == "LLMESRBERT4Rec":
        overrides["llmesr_distill"] = "cl"
    config, dataset, train, model = build(model_name, esr_config(tiny_data, tmp_path, **overrides))
    changed = train_steps(model, train)
    assert "item_embedding.id_embedding.weight" in changed
    assert any(n.startswith("item_embedding.llm_embedding.adapter") for n in changed)
    assert any(n.startswith("item_embedding.llm_to_id") for n in changed)  # cross-attention
    torch.testing.assert_close(model.item_embedding.llm_embedding.features, dataset.llm_feature("rand"))  # frozen


def test_stacked_views_equal_each_view_alone(tiny_data, tmp_path):
    """One stacked 2B batch gives each view exactly what that view alone gives (no cross-attention)."""
    write_features(str(tmp_path / "features"), dim=16)
    _, _, train, model = build("LLMESRSASRec", esr_config(tiny_data, tmp_path, llmesr_cross_attention=False))
    model.eval()
    batch = next(iter(train))
    seq, seq_len = batch["item_id_list"], batch["item_length"]
    with torch.no_grad():
        both = model.forward(seq, seq_len)
        from recbole_llm.model.sequential_recommender.sasrec import SASRec

        alone = []
        for table in (model.item_embedding.id_embedding.weight, model.item_embedding.llm_embedding.weight):
            model.embed_item_seq = lambda s, t=None, table=table: F.embedding(s, table)
            alone.append(SASRec.forward(model, seq, seq_len))
    torch.testing.assert_close(both, torch.cat(alone, dim=1))


def test_cross_attention_replaces_or_adds_to_the_view_input(tiny_data, tmp_path):
    write_features(str(tmp_path / "features"), dim=16)
    _, _, train, model = build("LLMESRSASRec", esr_config(tiny_data, tmp_path, llmesr_alpha=0.0, llmesr_cross_attention=True))
    model.eval()
    table = model.item_embedding
    seq = next(iter(train))["item_id_list"]
    with torch.no_grad():
        replaced = table.cross(table.id_embedding(seq), table.llm_embedding(seq), seq, to_llm=False)
        table.residual = True
        added = table.cross(table.id_embedding(seq), table.llm_embedding(seq), seq, to_llm=False)
        torch.testing.assert_close(added, replaced + table.id_embedding(seq))
        # causal: the input at position 0 depends on item 0 only
        changed = seq.clone()
        changed[:, 1:] = torch.where(changed[:, 1:] > 0, 1, 0)
        out = table.cross(table.id_embedding(changed), table.llm_embedding(changed), changed, to_llm=False)
        torch.testing.assert_close(out[:, 0], added[:, 0])


def test_id_table_initialised_from_pca_or_random(tiny_data, tmp_path):
    write_features(str(tmp_path / "features"), dim=16)
    _, dataset, _, model = build("LLMESRSASRec", esr_config(tiny_data, tmp_path, llmesr_id_scale=None))
    from recbole_llm.llm.extract import pca_reduce

    expected = pca_reduce(dataset.llm_feature("rand")[1:].numpy(), 16)
    torch.testing.assert_close(model.item_embedding.id_embedding.weight[1:], torch.from_numpy(expected))
    _, _, _, random_model = build("LLMESRSASRec", esr_config(tiny_data, tmp_path, id_init="random"))
    assert not torch.allclose(random_model.item_embedding.id_embedding.weight[1:], torch.from_numpy(expected))
    with pytest.raises(ValueError, match="id_init"):
        build("LLMESRSASRec", esr_config(tiny_data, tmp_path, id_init="zeros"))


def test_distillation_loss_on_a_hand_example(tiny_data, tmp_path):
    write_features(str(tmp_path / "features"), dim=16)
    _, _, train, model = build(
        "LLMESRSASRec", esr_config(tiny_data, tmp_path, llmesr_sim_users=2, llmesr_sim_sample=0, llmesr_distill_targets="encode")
    )
    batch = next(iter(train))
    users = batch["user_id"][:2]
    interaction = {"user_id": users}
    model.similar_users[users[0]] = torch.tensor([users[1], users[1]])
    model.similar_users[users[1]] = torch.tensor([users[0], users[1]])
    vectors = {int(users[0]): torch.full((32,), 1.0), int(users[1]): torch.full((32,), 3.0)}
    model.user_seqs[users[0], 0], model.user_seqs[users[1], 0] = 100, 101  # markers for the fake encoder
    model.sequence_vectors = lambda seqs, lens: torch.stack([vectors[int(users[0] if s[0] == 100 else users[1])] for s in seqs])
    states = torch.zeros(2, 32)
    # targets: user 0 -> mean(v1, v1) = 3; user 1 -> mean(v0, v1) = 2; MSE of zeros = (9 + 4) / 2
    assert model.distill_loss(interaction, states).item() == pytest.approx(6.5)
    model.distill, model.distill_tau = "cl", 1.0
    from recbole_llm.llm.contrastive import soft_contrastive_loss

    expected = soft_contrastive_loss(states, torch.stack([torch.full((32,), 3.0), torch.full((32,), 2.0)]), 1.0)
    assert model.distill_loss(interaction, states).item() == pytest.approx(expected.item())


def test_bank_distillation_reads_the_latest_states_of_seen_neighbours(tiny_data, tmp_path):
    write_features(str(tmp_path / "features"), dim=16)
    _, _, train, model = build("LLMESRSASRec", esr_config(tiny_data, tmp_path, llmesr_sim_users=2))
    assert model.distill_targets == "bank"  # the default
    users = torch.tensor([1, 2, 3])
    model.similar_users[1] = torch.tensor([2, 3])
    model.similar_users[2] = torch.tensor([1, 3])
    model.similar_users[3] = torch.tensor([4, 5])
    model.user_bank[3], model.user_bank_seen[3] = 4.0, True  # user 3 seen before, 1 and 2 not yet
    states = torch.zeros(3, 32)
    # user 1 -> mean over seen {3} = 4; user 2 -> 4; user 3: no neighbour seen, left out. MSE = 16
    loss = model.distill_loss({"user_id": users}, states)
    assert loss.item() == pytest.approx(16.0)
    assert model.user_bank_seen[[1, 2, 3]].all() and torch.equal(model.user_bank[1], torch.zeros(32))  # bank updated
    # nothing is encoded for the targets
    model.sequence_vectors = lambda *a: (_ for _ in ()).throw(AssertionError("bank mode must not encode"))
    model.distill_loss({"user_id": users}, states)
    # a training step runs and fills the bank
    model.user_bank_seen[:] = False
    batch = next(iter(train))
    assert torch.isfinite(model.calculate_loss(batch))
    assert model.user_bank_seen[batch["user_id"]].all()
    with pytest.raises(ValueError, match="llmesr_distill_targets"):
        build("LLMESRSASRec", esr_config(tiny_data, tmp_path, llmesr_distill_targets="cache"))


def test_cold_item_gets_a_finite_score_from_text(tmp_path):
    data = write_tiny_dataset(str(tmp_path / "data"))
    with open(os.path.join(data, "tiny", "tiny.item"), "a") as f:
        f.write("cold1\tred lamp model 99\tbrand1\tHome Lamp\n")
    feats = write_features(str(tmp_path / "features"), dim=16, extra_tokens=("cold1",))
    load_col = {"inter": ["user_id", "item_id", "timestamp"], "item": ["item_id"]}
    _, dataset, train, model = build("LLMESRSASRec", esr_config(data, tmp_path, load_col=load_col))
    cold = dataset.field2token_id["item_id"]["cold1"]
    assert int((dataset.inter_feat["item_id"] == cold).sum()) == 0
    model.eval()
    semantic = model.item_embedding.llm_embedding.weight[cold]
    torch.testing.assert_close(semantic, model.item_embedding.llm_embedding.adapt(torch.tensor(feats["cold1"]).unsqueeze(0))[0])
    with torch.no_grad():
        scores = model.full_sort_predict(next(iter(train)))
    assert torch.isfinite(scores[:, cold]).all() and scores[:, cold].std() > 0


# ---- similar users -------------------------------------------------------------------------------------
def test_nearest_users_excludes_self_and_users_without_history():
    vectors = torch.tensor([[0.0, 0.0], [1.0, 0.0], [0.9, 0.1], [0.0, 1.0], [0.1, 0.9]])
    valid = torch.tensor([False, True, True, True, True])
    top = nearest_users(vectors, valid, 2)
    assert top[1].tolist() == [2, 4] and top[3].tolist() == [4, 2]
    assert top[0].tolist() == [0, 0] and (top[1:] != 0).all()
    assert all(i not in top[i].tolist() for i in range(1, 5))


def test_similar_users_are_cached_reused_rebuilt_and_checked(tiny_data, tmp_path):
    write_features(str(tmp_path / "features"), dim=16)
    config, dataset, train, model = build("LLMESRSASRec", esr_config(tiny_data, tmp_path))
    path = similar_users_path(config, "rand", 10)
    assert os.path.isfile(path)
    sims = model.similar_users
    assert sims.shape == (dataset.user_num, 10) and (sims[1:] > 0).all()
    assert all(u not in sims[u].tolist() for u in range(1, dataset.user_num))
    # reused: the second model loads the same file (not rebuilt)
    mtime = os.path.getmtime(path)
    _, _, _, model2 = build("LLMESRSASRec", esr_config(tiny_data, tmp_path))
    assert os.path.getmtime(path) == mtime and torch.equal(model2.similar_users, sims)
    # rebuilt when the data change: another .inter is another key
    with open(os.path.join(tiny_data, "tiny", "tiny.inter"), "a") as f:
        f.write("u0\ti3\t99\n")
    config3, _, _, _ = build("LLMESRSASRec", esr_config(tiny_data, tmp_path))
    assert similar_users_path(config3, "rand", 10) != path
    assert os.path.isfile(similar_users_path(config3, "rand", 10))
    # a file of other users is rejected, naming the file
    other = str(tmp_path / "other.pth")
    artifact = torch.load(path, weights_only=True)
    artifact["user_tokens"] = ["[PAD]"] + [f"x{i}" for i in range(len(artifact["user_tokens"]) - 1)]
    torch.save(artifact, other)
    with pytest.raises(SimilarUsersError, match="other.pth' lacks"):
        build("LLMESRSASRec", esr_config(tiny_data, tmp_path, llmesr_similar_users=other))
    # a file with fewer neighbours than asked
    with pytest.raises(SimilarUsersError, match="neighbours"):
        ensure_similar_users(
            Config(model="LLMESRSASRec", dataset="tiny", config_dict=esr_config(tiny_data, tmp_path, llmesr_similar_users=path)),
            train.dataset, dataset.llm_feature("rand"), "rand",
            model.user_seqs, model.user_seq_lens, 20,
        )


def test_llmesr_runs_end_to_end(tiny_data, tmp_path):
    from recbole_llm.quick_start import run_recbole_llm

    write_features(str(tmp_path / "features"), dim=16)
    result = run_recbole_llm(model="LLMESRGRU4Rec", dataset="tiny", config_dict=esr_config(tiny_data, tmp_path, feature_whitening="zca"))
    assert np.isfinite(result["test_result"]["ndcg@10"]) and "ndcg_tail@10" in result["test_result"]


def test_mixin_yaml_is_read_after_the_backbone_and_before_overrides(tiny_data, tmp_path):
    config = Config(model="LLMESRSASRec", dataset="tiny", config_dict=llm_config(tiny_data, tmp_path, llmesr_sim_users=3))
    assert config["llmesr_alpha"] == 0.1 and config["id_init"] == "pca"  # LLMESRMixin.yaml
    assert config["train_mode"] == "all_positions"  # the mixin's value wins over SASRec.yaml's prefix
    assert config["length_bucketing"] is True  # SASRec.yaml still applies
    assert config["llmesr_sim_users"] == 3  # the config dict wins over the YAML
    gru = Config(model="LLMESRGRU4Rec", dataset="tiny", config_dict=llm_config(tiny_data, tmp_path))
    assert gru["llmesr_alpha"] == 0.1 and gru["train_mode"] == "all_positions"


def test_whitening_is_not_applied_twice_when_artifacts_are_prepared_again(tiny_data, tmp_path):
    """A search prepares features once in the driver and again in every trial (recbole_llm.tune): the second
    call starts from llm_feature_base, so a trial never whitens the whitened table."""
    from recbole_llm.model.adapters import prepare_llm_features
    from recbole_llm.quick_start import ARTIFACT_KEYS

    write_features(str(tmp_path / "features"), dim=16)
    config = Config(model="LLMESRSASRec", dataset="tiny", config_dict=esr_config(tiny_data, tmp_path, feature_whitening="zca"))
    zca = prepare_llm_features(config)
    assert zca.startswith("rand-whitezca-")
    shared = {k: config[k] for k in ARTIFACT_KEYS if config[k] is not None}
    trial = Config(model="LLMESRSASRec", dataset="tiny", config_dict=esr_config(tiny_data, tmp_path, feature_whitening="pca", **shared))
    assert prepare_llm_features(trial).startswith("rand-whitepca-") and trial["llm_feature_base"] == "rand"
    again = Config(model="LLMESRSASRec", dataset="tiny", config_dict=esr_config(tiny_data, tmp_path, feature_whitening="zca", **shared))
    assert prepare_llm_features(again) == zca


@pytest.mark.parametrize("train_mode", ["prefix", "all_positions"])
def test_user_sequences_are_the_whole_training_sequences(tiny_data, tmp_path, train_mode):
    from recbole_llm.data.utils import user_sequences

    write_features(str(tmp_path / "features"), dim=16)
    _, dataset, train, _ = build("LLMESRSASRec", esr_config(tiny_data, tmp_path, train_mode=train_mode, llmesr_alpha=0.0))
    seqs, lens = user_sequences(train.dataset)
    raw = {}
    with open(os.path.join(tiny_data, "tiny", "tiny.inter")) as f:
        next(f)
        for line in f:
            u, i, t = line.split("\t")
            raw.setdefault(u, []).append((float(t), i))
    uid, iid = dataset.field2token_id["user_id"], dataset.field2token_id["item_id"]
    for user, rows in raw.items():
        items = [iid[i] for _, i in sorted(rows)][:-2][-10:]  # leave-one-out: the last two are valid/test
        u = uid[user]
        assert lens[u] == len(items) and seqs[u, : len(items)].tolist() == items and (seqs[u, len(items):] == 0).all()
