"""LLMEmb RAT models, LLM2X, alignment loss, teacher loading, cold-start items."""

import math
import os

import numpy as np
import pytest
import torch
from conftest import tiny_config, write_tiny_dataset

from recbole_llm import Config, create_dataset, get_model, run_recbole_llm
from recbole_llm.llm.features import feature_base, save_features
from recbole_llm.model.adapters import AdaptedEmbedding, build_adapter
from recbole_llm.llm.contrastive import info_nce_loss, soft_contrastive_loss
from recbole_llm.model.teacher import TeacherError, load_teacher_table
from recbole_llm.utils import data_preparation

N_ITEMS = 30
DIM = 12


def write_features(folder, n_items=N_ITEMS, dim=DIM, seed=0, extra_tokens=()):
    tokens = [f"i{i}" for i in range(n_items)] + list(extra_tokens)
    matrix = np.random.default_rng(seed).normal(size=(len(tokens), dim)).astype(np.float32)
    save_features(feature_base(folder, "tiny", "rand"), tokens, matrix, {"model": "random"})
    return dict(zip(tokens, matrix))


def llm_config(tiny_data, tmp_path, **overrides):
    overrides.setdefault("feature_dir", str(tmp_path / "features"))
    overrides.setdefault("llm_feature", "rand")
    overrides.setdefault("align_alpha", 0.0)
    return tiny_config(tiny_data, tmp_path, **overrides)


def build(model_name, config_dict):
    config = Config(model=model_name, dataset="tiny", config_dict=config_dict)
    from recbole_llm.quick_start import prepare_artifacts

    prepare_artifacts(config)
    dataset = create_dataset(config)
    train, valid, test = data_preparation(config, dataset)
    return config, dataset, train, get_model(model_name)(config, train.dataset)


def train_steps(model, train, steps=3):
    """Train ``steps`` Adam steps (every loss finite); the names of the parameters that changed."""
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    optimizer = torch.optim.Adam(model.parameters(), lr=0.01)
    for _, batch in zip(range(steps), train):
        loss = model.calculate_loss(batch)
        assert torch.isfinite(loss)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return {n for n, p in model.named_parameters() if not torch.equal(before[n], p)}


# ---- losses on hand examples --------------------------------------------------------------------------
def test_soft_contrastive_loss_hand_example():
    x = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    y = torch.tensor([[1.0, 0.0], [1.0, 1.0]])
    tau = 2.0
    # L = X Y^T / tau = [[.5, .5], [0, .5]]; T = softmax_row(tau * (XX^T + YY^T) / 2) = softmax_row([[2, 1], [1, 3]])
    L = [[0.5, 0.5], [0.0, 0.5]]
    S = [[2.0, 1.0], [1.0, 3.0]]
    T = [[math.exp(v) / sum(math.exp(w) for w in row) for v in row] for row in S]
    row_lsm = [[v - math.log(sum(math.exp(w) for w in row)) for v in row] for row in L]
    cols = list(zip(*L))
    col_lsm = [[v - math.log(sum(math.exp(w) for w in col)) for v in col] for col in cols]  # col_lsm[i][j] = log softmax_j(L_.i)
    expected = 0.0
    for i in range(2):
        expected -= sum(T[i][j] * row_lsm[i][j] for j in range(2))
        expected -= sum(T[j][i] * col_lsm[i][j] for j in range(2))
    expected /= 4
    assert soft_contrastive_loss(x, y, tau).item() == pytest.approx(expected, rel=1e-6)
    # InfoNCE: the diagonal is the positive
    assert info_nce_loss(x, x, 0.1).item() < info_nce_loss(x, x.flip(0), 0.1).item()


def test_adapter_shapes_and_ablation():
    adapter = build_adapter(384, 64)
    assert [m.out_features for m in adapter if isinstance(m, torch.nn.Linear)] == [192, 64]
    assert len(build_adapter(384, 64, layers=1)) == 1
    assert any(isinstance(m, torch.nn.GELU) for m in build_adapter(384, 64, activation="gelu", dropout=0.1))
    with pytest.raises(ValueError, match="adapter_activation"):
        build_adapter(8, 4, activation="swish")


@pytest.mark.parametrize("layers", [2, 3])
def test_linear_adapter_is_folded_with_same_values_and_gradients(layers):
    torch.manual_seed(0)
    features = torch.randn(50, 32)
    emb = AdaptedEmbedding(features, 8, layers=layers)
    assert emb.linear_chain() is not None
    folded = emb.compute_table()
    plain = emb.adapter(features)
    torch.testing.assert_close(folded[1:], plain[1:], rtol=1e-5, atol=1e-5)
    params = list(emb.adapter.parameters())
    grads_folded = torch.autograd.grad((folded[1:] ** 2).sum(), params)
    grads_plain = torch.autograd.grad((plain[1:] ** 2).sum(), params)
    for a, b in zip(grads_folded, grads_plain):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4)


def test_adapter_with_activation_or_dropout_is_not_folded():
    features = torch.randn(20, 16)
    assert AdaptedEmbedding(features, 4, activation="relu").linear_chain() is None
    emb = AdaptedEmbedding(features, 4, dropout=0.5)
    emb.train()
    assert emb.linear_chain() is None  # dropout active between the layers
    emb.eval()
    assert emb.linear_chain() is not None  # dropout is the identity at evaluation
    torch.testing.assert_close(emb.weight[1:], emb.adapter(features)[1:], rtol=1e-5, atol=1e-5)


def test_adapted_embedding_caches_only_where_safe():
    emb = AdaptedEmbedding(torch.randn(5, 8), 4, extra_rows=1)
    assert emb.weight.shape == (6, 4) and torch.all(emb.weight[0] == 0)
    emb.train()
    assert emb.weight is not emb.weight  # training: recomputed (parameters change between steps)
    with emb.cached():
        assert emb.weight is emb.weight
    emb.eval()
    first = emb.weight
    assert emb.weight is first  # eval: computed once per evaluation
    emb.train()
    assert emb.weight is not first


# ---- the models ---------------------------------------------------------------------------------------
def test_adapted_table_is_input_and_scoring_table(tiny_data, tmp_path):
    write_features(str(tmp_path / "features"))
    config, dataset, train, model = build("LLMEmbSASRec", llm_config(tiny_data, tmp_path))
    model.eval()
    table = model.item_embedding.weight
    expected = model.item_embedding.adapter(dataset.llm_feature("rand"))
    torch.testing.assert_close(table[1:], expected[1:])
    assert not hasattr(model.item_embedding, "num_embeddings") or model.item_embedding.num_embeddings == dataset.item_num
    batch = next(iter(train)).to("cpu")
    seq, seq_len = batch["item_id_list"], batch["item_length"]
    # input: perturbing the adapter changes the sequence state; scoring uses the same table
    with torch.no_grad():
        state = model.forward(seq, seq_len)
        scores = model.full_sort_predict(batch)
        torch.testing.assert_close(scores, state @ table.t())
        model.item_embedding.adapter[0].weight.add_(0.5)
        model.eval()  # drop the eval cache
        assert not torch.allclose(model.forward(seq, seq_len), state)
    # no ID embedding table of the backbone is left
    assert all("item_embedding.weight" != name for name, _ in model.named_parameters())


@pytest.mark.parametrize("model_name", ["LLMEmbSASRec", "LLMEmbGRU4Rec", "LLMEmbBERT4Rec", "LLM2XSASRec", "LLM2XBERT4Rec"])
def test_backbones_train_a_few_steps(tiny_data, tmp_path, model_name):
    write_features(str(tmp_path / "features"), dim=16)
    overrides = {"align_alpha": 0.01, "teacher_epochs": 1, "embedding_size": 16, "hidden_size": 16}
    if model_name.startswith("LLM2X"):
        overrides = {"embedding_size": 16, "hidden_size": 16}
    config, dataset, train, model = build(model_name, llm_config(tiny_data, tmp_path, **overrides))
    changed = train_steps(model, train)
    assert any("item_embedding" in n for n in changed)
    if model_name.startswith("LLMEmb"):
        assert torch.equal(model.item_embedding.features, dataset.llm_feature("rand"))  # frozen LLM table
        if model_name == "LLMEmbBERT4Rec":
            assert "item_embedding.extra" in changed  # the mask token learns its own vector


def test_llm2x_initialises_from_features(tiny_data, tmp_path):
    config, dataset, train, model = build(
        "LLM2XSASRec", llm_config(tiny_data, tmp_path, llm_feature=None, llm_path="minilm", hidden_size=16, llm2x_scale=None)
    )
    feats = dataset.llm_feature(config["llm_feature"])
    assert feats.shape[1] == 16 and "-pca16-" in config["llm_feature"]
    torch.testing.assert_close(model.item_embedding.weight[1:], feats[1:])


def test_alignment_loss_uses_teacher_rows(tiny_data, tmp_path):
    write_features(str(tmp_path / "features"), dim=16)
    config, dataset, train, model = build(
        "LLMEmbSASRec", llm_config(tiny_data, tmp_path, align_alpha=0.5, teacher_epochs=1, hidden_size=16)
    )
    assert os.path.isfile(config["teacher_checkpoint"])  # auto: trained and cached
    batch = next(iter(train))
    items = model.alignment_items(batch)
    assert len(items) > 1 and torch.all(items > 0)
    expected = soft_contrastive_loss(model.teacher_table[items], model.item_embedding.weight[items], 2.0)
    torch.testing.assert_close(model.alignment_loss(batch), expected)
    # the same teacher is reused, not retrained
    config2 = Config(model="LLMEmbSASRec", dataset="tiny", config_dict=llm_config(tiny_data, tmp_path, align_alpha=0.5, teacher_epochs=1, hidden_size=16))
    from recbole_llm.model.teacher import ensure_teacher

    assert ensure_teacher(config2, 16, run=run_recbole_llm) == config["teacher_checkpoint"]


def test_teacher_with_other_items_is_rejected(tiny_data, tmp_path):
    write_features(str(tmp_path / "features"))
    config, dataset, _, _ = build("LLMEmbSASRec", llm_config(tiny_data, tmp_path))
    path = str(tmp_path / "teacher.pth")
    tokens = ["[PAD]"] + [f"i{i}" for i in range(10)]  # lacks i10..i29
    torch.save({"item_embedding": torch.randn(len(tokens), 16), "item_tokens": tokens}, path)
    with pytest.raises(TeacherError, match="lacks 20 items"):
        load_teacher_table(path, dataset, 16)
    tokens = ["[PAD]"] + [f"i{i}" for i in range(30)]
    torch.save({"item_embedding": torch.randn(len(tokens), 8), "item_tokens": tokens}, path)
    with pytest.raises(TeacherError, match="width 8"):
        load_teacher_table(path, dataset, 16)
    # rows are matched by token, not by position
    table = torch.randn(len(tokens), 16)
    torch.save({"item_embedding": table.flip(0), "item_tokens": tokens[::-1]}, path)
    aligned = load_teacher_table(path, dataset, 16)
    token2id = dataset.field2token_id["item_id"]
    assert torch.equal(aligned[token2id["i7"]], table[tokens.index("i7")])


def test_cold_start_item_is_scored_from_its_text(tmp_path):
    """An item with text but no interaction gets an embedding from the adapter and can be ranked."""
    data = write_tiny_dataset(str(tmp_path / "data"))
    with open(os.path.join(data, "tiny", "tiny.item"), "a") as f:
        f.write("cold1\tred lamp model 99\tbrand1\tHome Lamp\n")
    feats = write_features(str(tmp_path / "features"), extra_tokens=("cold1",))
    config, dataset, train, model = build(
        "LLMEmbSASRec", llm_config(data, tmp_path, load_col={"inter": ["user_id", "item_id", "timestamp"], "item": ["item_id"]})
    )
    cold = dataset.field2token_id["item_id"]["cold1"]
    assert int((dataset.inter_feat["item_id"] == cold).sum()) == 0  # never interacted
    model.eval()
    table = model.item_embedding.weight
    expected = model.item_embedding.adapter(torch.tensor(feats["cold1"]).unsqueeze(0))[0]
    torch.testing.assert_close(table[cold], expected)
    assert table[cold].abs().sum() > 0
    batch = next(iter(train))
    with torch.no_grad():
        scores = model.full_sort_predict(batch)
    assert torch.isfinite(scores[:, cold]).all() and scores[:, cold].std() > 0


def test_teacher_cache_ignores_student_seed_and_batch(tiny_data, tmp_path):
    from recbole_llm.model.teacher import teacher_config, teacher_path

    def path(**overrides):
        config = Config(model="LLMEmbSASRec", dataset="tiny", config_dict=llm_config(tiny_data, tmp_path, align_alpha=0.01, **overrides))
        return teacher_path(config, 16), teacher_config(config, 16)

    base, settings = path(seed=1, train_batch_size=64)
    assert settings["seed"] == 2020 and settings["train_batch_size"] == 128
    assert path(seed=2, train_batch_size=2048)[0] == base  # one teacher serves every student seed and batch
    assert path(teacher_seed=7)[0] != base
    assert path(teacher_batch_size=256)[0] != base
    assert path(MAX_ITEM_LIST_LENGTH=20)[0] != base  # the split/sequence shape still matters


def test_second_run_waits_for_the_teacher_being_built_and_reuses_it(tiny_data, tmp_path, monkeypatch):
    """Two runs that miss the same teacher: the second blocks on the build lock, then reuses the file."""
    import threading

    from recbole_llm.fileio import build_lock
    from recbole_llm.model import teacher as teacher_module

    config = Config(model="LLMEmbSASRec", dataset="tiny", config_dict=llm_config(tiny_data, tmp_path, align_alpha=0.01))
    path = teacher_module.teacher_path(config, 16)
    artifact = teacher_module.Teacher(16)
    key = artifact.key(artifact.settings(config))
    holding, events = threading.Event(), []

    def other_run():  # holds the lock while "training", then writes the teacher (a sound file recording its key)
        with build_lock(path):
            holding.set()
            threading.Event().wait(0.5)
            torch.save({"item_embedding": torch.zeros(31, 16), "item_tokens": ["[PAD]"] + [f"i{i}" for i in range(30)], "cache_key": key}, path)
            events.append("built")

    monkeypatch.setattr(teacher_module, "_train_teacher", lambda *a: pytest.fail("the teacher was trained twice"))
    thread = threading.Thread(target=other_run)
    thread.start()
    holding.wait()
    assert teacher_module.ensure_teacher(config, 16, run=run_recbole_llm) == path
    events.append("reused")
    thread.join()
    assert events == ["built", "reused"]


@pytest.mark.parametrize("model_name", ["BERT4Rec", "LLMEmbBERT4Rec"])
def test_bert4rec_output_bias_can_be_switched_off(tiny_data, tmp_path, model_name):
    """output_bias: False keeps every score a plain dot product, through training and in full-sort scoring."""
    write_features(str(tmp_path / "features"), dim=16)
    overrides = {"train_mode": "all_positions", "embedding_size": 16, "hidden_size": 16}
    *_, with_bias = build(model_name, llm_config(tiny_data, tmp_path, **overrides))
    assert "output_bias" in dict(with_bias.named_parameters())
    _, _, train, model = build(model_name, llm_config(tiny_data, tmp_path, output_bias=False, **overrides))
    assert "output_bias" not in dict(model.named_parameters())
    optimizer = torch.optim.Adam(model.parameters(), lr=0.1)
    for batch in train:
        optimizer.zero_grad()
        model.calculate_loss(batch).backward()
        optimizer.step()
    assert torch.equal(model.output_bias, torch.zeros(model.n_items))
    model.eval()
    batch = next(iter(train))
    with torch.no_grad():
        seq = model.reconstruct_test_data(batch["item_id_list"], batch["item_length"])
        states = model.gather_indexes(model.forward(seq), batch["item_length"] - 1)
        expected = states @ model.item_embedding.weight[: model.n_items].t()
        torch.testing.assert_close(model.full_sort_predict(batch), expected)


# ---- sampled softmax (loss_type: SSM) ----------------------------------------------------------------------
def test_sampled_softmax_hand_example_with_logq_and_accidental_hits():
    from recbole_llm.model.losses import sampled_softmax_loss

    table = torch.tensor([[0.0, 0.0], [1.0, 0.0], [0.0, 1.0], [1.0, 1.0]])
    states = torch.tensor([[2.0, 1.0]])
    pos = torch.tensor([1])
    negs = torch.tensor([2, 3, 1])  # item 1 is the positive: an accidental hit, removed
    log_q = torch.log(torch.tensor([0.5, 2.0, 1.0]))
    loss = sampled_softmax_loss(states, pos, table, negs, log_q)
    s_pos, s2, s3 = 2.0, 1.0 - math.log(0.5), 3.0 - math.log(2.0)
    expected = -(s_pos - math.log(math.exp(s_pos) + math.exp(s2) + math.exp(s3)))
    assert loss.item() == pytest.approx(expected, rel=1e-6)
    # in-batch negatives: the other row's positive, corrected by its expected count
    states2, pos2 = torch.tensor([[2.0, 1.0], [0.0, 1.0]]), torch.tensor([1, 2])
    log_qb = torch.log(torch.tensor([0.4, 0.8]))
    loss2 = sampled_softmax_loss(states2, pos2, table, negs[:2], log_q[:2], in_batch=True, log_q_batch=log_qb)
    row0 = -(2.0 - math.log(math.exp(2.0) + math.exp(s2) + math.exp(s3) + math.exp(1.0 - math.log(0.8))))
    # row 1 (positive 2, score 1): sampled 2 is its own positive (removed), sampled 3 scores 1; in-batch item 1 scores 0
    row1 = -(1.0 - math.log(math.exp(1.0) + math.exp(1.0 - math.log(2.0)) + math.exp(0.0 - math.log(0.4))))
    assert loss2.item() == pytest.approx((row0 + row1) / 2, rel=1e-6)
    # a per-item bias (BERT4Rec's output_bias) joins every score, positives and negatives alike
    bias = torch.tensor([0.0, 0.5, -1.0, 2.0])
    loss3 = sampled_softmax_loss(states, pos, table, negs, log_q, bias=bias)
    b_pos, b2, b3 = s_pos + 0.5, s2 - 1.0, s3 + 2.0
    assert loss3.item() == pytest.approx(-(b_pos - math.log(math.exp(b_pos) + math.exp(b2) + math.exp(b3))), rel=1e-6)


def test_negative_sampler_distributions_and_exclusions():
    from recbole_llm.model.losses import NegativeSampler

    uniform = NegativeSampler(5)
    assert uniform.q.tolist() == pytest.approx([0, 0.25, 0.25, 0.25, 0.25])
    pop = NegativeSampler(5, "popularity", counts=torch.tensor([0, 1, 4, 9, 16]), power=0.5)
    assert pop.q.tolist() == pytest.approx([0, 0.1, 0.2, 0.3, 0.4])
    pop.exclude(torch.tensor([False, False, False, False, True]))
    items, log_count = pop.sample(2000, "cpu", torch.Generator().manual_seed(0))
    assert not (items == 4).any() and not (items == 0).any()
    assert log_count[items == 3][0].item() == pytest.approx(math.log(2000 * 0.5), rel=1e-5)


@pytest.mark.parametrize("model_name, train_mode", [("SASRec", "all_positions"), ("LLMEmbSASRec", "all_positions"),
                                                    ("GRU4Rec", "all_positions"), ("LLMEmbGRU4Rec", "prefix"),
                                                    ("BERT4Rec", "all_positions"), ("LLMEmbBERT4Rec", "prefix")])
def test_sampled_softmax_trains(tiny_data, tmp_path, model_name, train_mode):
    write_features(str(tmp_path / "features"), dim=16)
    overrides = {"loss_type": "SSM", "ssm_negatives": 8, "ssm_in_batch": True, "train_mode": train_mode,
                 "embedding_size": 16, "hidden_size": 16}
    config, dataset, train, model = build(model_name, llm_config(tiny_data, tmp_path, **overrides))
    assert config["train_neg_sample_args"]["distribution"] == "none"
    changed = train_steps(model, train)
    assert any("item_embedding" in n for n in changed)


def test_partial_adapted_table_equals_rows_of_the_full_one(tiny_data, tmp_path):
    write_features(str(tmp_path / "features"), dim=16)
    config, dataset, train, model = build("LLMEmbSASRec", llm_config(tiny_data, tmp_path, embedding_size=16, hidden_size=16))
    ids = torch.tensor([0, 3, 3, 17, 1, 30])
    torch.testing.assert_close(model.item_embedding.rows(ids), model.item_embedding.weight[ids])
    assert torch.equal(model.item_embedding.rows(torch.tensor([0]))[0], torch.zeros(16))


@pytest.mark.parametrize("model_name, train_mode", [("LLMEmbSASRec", "all_positions"), ("LLMEmbSASRec", "prefix"), ("SASRec", "all_positions")])
def test_sampled_softmax_on_needed_rows_equals_the_full_table(tiny_data, tmp_path, model_name, train_mode):
    """Same negatives, same loss: the compact table of the step's rows gives what the whole table gives."""
    write_features(str(tmp_path / "features"), dim=16)
    overrides = {"loss_type": "SSM", "ssm_negatives": 6, "ssm_in_batch": True, "train_mode": train_mode,
                 "embedding_size": 16, "hidden_size": 16}
    config, dataset, train, model = build(model_name, llm_config(tiny_data, tmp_path, **overrides))
    model.eval()  # no dropout: both computations see the same random stream
    batch = next(iter(train))
    losses = []
    for partial in (True, False):
        model.ssm_partial_table = partial
        torch.manual_seed(0)
        losses.append(model.calculate_loss(batch))
    torch.testing.assert_close(losses[0], losses[1])


def test_checkpoints_hold_the_feature_key_not_the_frozen_table(tiny_data, tmp_path):
    """A frozen LLM table is rebuilt from its file, not saved; a checkpoint of other features is refused by name."""
    from recbole_llm.errors import DataFileError
    from recbole_llm.quick_start import load_model_file

    write_features(str(tmp_path / "features"), dim=16)
    result = run_recbole_llm(model="LLMEmbSASRec", dataset="tiny", config_dict=llm_config(tiny_data, tmp_path, embedding_size=16))
    checkpoint = torch.load(result["model_file"], weights_only=False)
    state = checkpoint["state_dict"]
    assert "item_embedding.features" not in state and bytes(state["item_embedding.features_key"].tolist()).decode()
    _, model, *_ = load_model_file(result["model_file"])  # rebuilt from the feature file, same metrics
    assert model.item_embedding.features.shape == (31, 16)
    # a checkpoint written before (the table inside) still loads
    legacy = dict(state, **{"item_embedding.features": model.item_embedding.features.clone()})
    del legacy["item_embedding.features_key"]
    model.load_state_dict(legacy)
    legacy["item_embedding.features"] = legacy["item_embedding.features"] + 1  # ... but not one with other features
    with pytest.raises(DataFileError, match="differs from the one built now"):
        model.load_state_dict(legacy)
    # features rebuilt with other content: the checkpoint's key no longer matches
    write_features(str(tmp_path / "features"), dim=16, seed=1)
    with pytest.raises(DataFileError, match="checkpoint was trained with item_embedding.features from"):
        load_model_file(result["model_file"])
