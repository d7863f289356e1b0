"""The plugin's GRU4Rec, BERT4Rec and FDSA: length bucketing (exact) and train_mode all_positions."""

import pytest
import torch
import torch.nn.functional as F
from conftest import tiny_config, assert_reproduces
from recbole.model.sequential_recommender.bert4rec import BERT4Rec as RecBoleBERT4Rec
from recbole.model.sequential_recommender.fdsa import FDSA as RecBoleFDSA
from recbole.model.sequential_recommender.gru4rec import GRU4Rec as RecBoleGRU4Rec

import recbole_llm.model.layers as layers
from recbole_llm import Config, create_dataset, get_model, run_recbole_llm
from recbole_llm.model.sequential_recommender.bert4rec import BERT4Rec
from recbole_llm.model.sequential_recommender.fdsa import FDSA
from recbole_llm.model.sequential_recommender.gru4rec import GRU4Rec
from recbole_llm.utils import data_preparation

ITEM_COLS = {"inter": ["user_id", "item_id", "timestamp"], "item": ["item_id", "categories"]}
RECBOLE = {"GRU4Rec": RecBoleGRU4Rec, "BERT4Rec": RecBoleBERT4Rec, "FDSA": RecBoleFDSA}
PLUGIN = {"GRU4Rec": GRU4Rec, "BERT4Rec": BERT4Rec, "FDSA": FDSA}
MAX_LEN = 10


def config_dict(tiny_data, tmp_path, model_name, **overrides):
    extra = {"n_layers": 2, "n_heads": 2, "num_layers": 2}
    if model_name == "FDSA":
        extra.update(load_col=ITEM_COLS, selected_features=["categories"])
    extra.update(overrides)
    return tiny_config(tiny_data, tmp_path, **extra)


def build(tiny_data, tmp_path, model_name, **overrides):
    config = Config(model=model_name, dataset="tiny", config_dict=config_dict(tiny_data, tmp_path, model_name, **overrides))
    dataset = create_dataset(config)
    train, valid, test = data_preparation(config, dataset)
    torch.manual_seed(0)
    return config, get_model(model_name)(config, train.dataset), train, test


def random_sequences(n_items, lengths, max_len=MAX_LEN, seed=0):
    generator = torch.Generator().manual_seed(seed)
    seq = torch.zeros(len(lengths), max_len, dtype=torch.long)
    for row, length in enumerate(lengths.tolist()):
        seq[row, :length] = torch.randint(1, n_items, (length,), generator=generator)
    return seq


LENGTHS = torch.tensor([1, MAX_LEN, 3, 7, 2, MAX_LEN, 5, 1, 4, 9])


def real_positions(lengths, max_len):
    return torch.arange(max_len).unsqueeze(0) < lengths.unsqueeze(1)


def sequence_states(model, seq, lengths):
    """What bucketing must keep: the (B, H) states of GRU4Rec / FDSA, BERT4Rec's states at every real position."""
    if isinstance(model, BERT4Rec):
        test_seq = model.reconstruct_test_data(seq, lengths)  # the eval input: mask token after the last item
        return model.forward(test_seq)[real_positions(lengths, seq.size(1))]
    return model.forward(seq, lengths)


# ---- exactness ------------------------------------------------------------------------------------------
@pytest.mark.parametrize("model_name", ["GRU4Rec", "BERT4Rec", "FDSA"])
def test_bucketed_outputs_equal_recbole_in_eval(tiny_data, tmp_path, model_name, monkeypatch):
    _, model, _, test = build(tiny_data, tmp_path, model_name)
    assert type(model) is PLUGIN[model_name] and isinstance(model, RECBOLE[model_name]) and model.length_bucketing
    model.eval()
    seq = random_sequences(model.n_items, LENGTHS)
    cuts = []
    original_groups = layers.length_groups

    def spy(*args, **kwargs):
        groups = original_groups(*args, **kwargs)
        cuts.extend(cut for _, cut in groups)
        return groups

    monkeypatch.setattr(layers, "length_groups", spy)
    batch = next(iter(test))[0]
    with torch.no_grad():
        bucketed = sequence_states(model, seq, LENGTHS)
        bucketed_scores = model.full_sort_predict(batch)
        model.length_bucketing = False
        padded = sequence_states(model, seq, LENGTHS)
        padded_scores = model.full_sort_predict(batch)
        if model_name == "BERT4Rec":  # the unbucketed path is RecBole's code
            recbole = RecBoleBERT4Rec.forward(model, RecBoleBERT4Rec.reconstruct_test_data(model, seq, LENGTHS))
            recbole = recbole[real_positions(LENGTHS, MAX_LEN)]
        else:
            recbole = RECBOLE[model_name].forward(model, seq, LENGTHS)
        recbole_scores = RECBOLE[model_name].full_sort_predict(model, batch)
    assert min(cuts) < MAX_LEN and len(set(cuts)) > 2  # several groups, cut short
    torch.testing.assert_close(padded, recbole)
    torch.testing.assert_close(padded_scores, recbole_scores)
    torch.testing.assert_close(bucketed, padded, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(bucketed_scores, padded_scores, rtol=1e-5, atol=1e-5)


class ReversedGRU(torch.nn.Module):
    """A GRU that reads the sequence backwards: every output then depends on the trailing padding."""

    def __init__(self, gru):
        super().__init__()
        self.gru = gru

    def forward(self, x):
        output, hidden = self.gru(x.flip(1))
        return output.flip(1), hidden


@pytest.mark.parametrize("model_name", ["GRU4Rec", "BERT4Rec", "FDSA"])
def test_the_exactness_check_can_fail(tiny_data, tmp_path, model_name, monkeypatch):
    """The same comparison fails as soon as outputs can see the padding that bucketing cuts away."""
    _, model, _, _ = build(tiny_data, tmp_path, model_name)
    model.eval()
    if model_name == "GRU4Rec":
        model.gru_layers = ReversedGRU(model.gru_layers)
    else:  # no causal / key-padding mask: real positions attend to the padding too
        monkeypatch.setattr(model, "get_attention_mask", lambda seq, bidirectional=False: torch.zeros(seq.size(0), 1, seq.size(1), seq.size(1)))
    seq = random_sequences(model.n_items, LENGTHS)
    with torch.no_grad():
        bucketed = sequence_states(model, seq, LENGTHS)
        model.length_bucketing = False
        padded = sequence_states(model, seq, LENGTHS)
    assert not torch.allclose(bucketed, padded, rtol=1e-5, atol=1e-5)


def test_bert4rec_reconstruct_test_data_is_recboles(tiny_data, tmp_path):
    _, model, _, _ = build(tiny_data, tmp_path, "BERT4Rec")
    seq = random_sequences(model.n_items, LENGTHS)
    expected = RecBoleBERT4Rec.reconstruct_test_data(model, seq.clone(), LENGTHS)
    assert torch.equal(model.reconstruct_test_data(seq, LENGTHS), expected)


def test_gru4rec_states_at_every_position_are_recboles_prefix_states(tiny_data, tmp_path):
    _, model, _, _ = build(tiny_data, tmp_path, "GRU4Rec")
    model.eval()
    seq = random_sequences(model.n_items, LENGTHS)
    with torch.no_grad():
        every = model.encode_all(seq, LENGTHS)
        for row, length in enumerate(LENGTHS.tolist()):
            prefixes = seq[row].repeat(length, 1)
            prefix_states = RecBoleGRU4Rec.forward(model, prefixes, torch.arange(1, length + 1))
            torch.testing.assert_close(every[row, :length], prefix_states, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("loss_type", ["CE", "BPR"])
def test_bert4rec_prefix_loss_is_recboles(tiny_data, tmp_path, loss_type):
    """The loss on the counted slots only equals RecBole's loss over all slots with zero weights."""
    _, model, train, _ = build(tiny_data, tmp_path, "BERT4Rec", loss_type=loss_type)
    batch = next(iter(train))
    assert (batch["MASK_INDEX"] == 0).any()  # padded slots exist (and must not count)
    model.eval()
    with torch.no_grad():
        ours = model.calculate_loss(batch)
        model.length_bucketing = False
        recbole = RecBoleBERT4Rec.calculate_loss(model, batch)
    torch.testing.assert_close(ours, recbole, rtol=1e-5, atol=1e-6)


# ---- all_positions ------------------------------------------------------------------------------------
def test_gru4rec_all_positions_loss_uses_every_valid_position(tiny_data, tmp_path):
    _, model, train, _ = build(tiny_data, tmp_path, "GRU4Rec", train_mode="all_positions")
    batch = next(iter(train))
    seq, lengths, targets = batch["item_id_list"], batch["item_length"], batch["item_id_target_list"]
    assert len(train.dataset) == 40  # one row per user
    model.eval()  # no dropout: the loss is a deterministic function of the batch
    with torch.no_grad():
        loss = model.calculate_loss(batch)
        table = model.item_embedding.weight
        terms = []
        for row, length in enumerate(lengths.tolist()):  # RecBole's forward on every prefix of every row
            states = RecBoleGRU4Rec.forward(model, seq[row].repeat(length, 1), torch.arange(1, length + 1))
            terms.append(F.cross_entropy(states @ table.t(), targets[row, :length], reduction="none"))
        terms = torch.cat(terms)
    assert len(terms) == int(lengths.sum()) > len(seq)
    torch.testing.assert_close(loss, terms.mean(), rtol=1e-5, atol=1e-5)


def test_bert4rec_all_positions_masks_the_whole_training_sequence(tiny_data, tmp_path):
    _, model, train, _ = build(tiny_data, tmp_path, "BERT4Rec", train_mode="all_positions", MAX_ITEM_LIST_LENGTH=6)
    batch = next(iter(train))
    seq, lengths, target = batch["item_id_list"], batch["item_length"], batch["item_id"]
    assert len(train.dataset) == 40 and (lengths == 6).any() and (lengths < 6).any()
    torch.manual_seed(3)
    masked_seq, whole, masked = model.cloze_batch(batch)
    for row, length in enumerate(lengths.tolist()):
        expected = seq[row, :length].tolist() + [int(target[row])]
        expected = expected[-6:]  # the oldest item drops out of a full row
        n = len(expected)
        assert whole[row, :n].tolist() == expected and not whole[row, n:].any()
        assert int(masked[row].sum()) == max(1, round(n * model.mask_ratio)) and not masked[row, n:].any()
    assert (masked_seq[masked] == model.mask_token).all() and torch.equal(masked_seq[~masked], whole[~masked])
    model.eval()
    with torch.no_grad():
        torch.manual_seed(3)
        loss = model.calculate_loss(batch)
        states = RecBoleBERT4Rec.forward(model, masked_seq)[masked]
        logits = states @ model.item_embedding.weight[: model.n_items].t() + model.output_bias
        expected_loss = F.cross_entropy(logits, whole[masked])
    torch.testing.assert_close(loss, expected_loss, rtol=1e-5, atol=1e-5)


def test_all_positions_needs_the_target_list(tiny_data, tmp_path):
    _, model, _, _ = build(tiny_data, tmp_path, "GRU4Rec", train_mode="all_positions")
    _, _, prefix_train, _ = build(tiny_data, tmp_path, "GRU4Rec")
    with pytest.raises(KeyError, match="all_positions"):
        model.calculate_loss(next(iter(prefix_train)))


def test_bad_train_mode(tiny_data, tmp_path):
    with pytest.raises(ValueError, match="train_mode"):
        build(tiny_data, tmp_path, "BERT4Rec", train_mode="everything")


# ---- training ------------------------------------------------------------------------------------------
def train_steps(model, train, steps=2):
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    optimizer = torch.optim.Adam(model.parameters(), lr=0.01)
    model.train()
    for _, batch in zip(range(steps), train):
        loss = model.calculate_loss(batch)
        assert torch.isfinite(loss) and loss.requires_grad
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return [n for n, p in model.named_parameters() if not torch.equal(before[n], p)]


@pytest.mark.parametrize(
    "model_name,mode,loss_type",
    [("GRU4Rec", "prefix", "CE"), ("GRU4Rec", "all_positions", "CE"), ("GRU4Rec", "all_positions", "BPR"),
     ("BERT4Rec", "prefix", "CE"), ("BERT4Rec", "all_positions", "CE"), ("BERT4Rec", "all_positions", "BPR"),
     ("FDSA", "prefix", "CE")],
)
def test_models_train_in_each_mode(tiny_data, tmp_path, model_name, mode, loss_type):
    overrides = {"train_mode": mode, "loss_type": loss_type, "train_batch_size": 16}
    if loss_type == "BPR" and model_name != "BERT4Rec":
        overrides["train_neg_sample_args"] = {"distribution": "uniform", "sample_num": 1}
    _, model, train, _ = build(tiny_data, tmp_path, model_name, **overrides)
    changed = train_steps(model, train)
    assert "item_embedding.weight" in changed


@pytest.mark.parametrize("model_name,mode", [("GRU4Rec", "all_positions"), ("BERT4Rec", "all_positions"), ("FDSA", "prefix")])
def test_full_runs(tiny_data, tmp_path, model_name, mode):
    overrides = {"train_mode": mode}
    if model_name == "BERT4Rec":
        overrides["transform"] = None  # all_positions masks in the model: RecBole's transform is not needed
    result = run_recbole_llm(model=model_name, dataset="tiny", config_dict=config_dict(tiny_data, tmp_path, model_name, **overrides))
    assert_reproduces(result)


def test_yaml_defaults_layer_on_recboles(tiny_data, tmp_path):
    for name, recbole_key in (("GRU4Rec", "num_layers"), ("BERT4Rec", "mask_ratio"), ("FDSA", "selected_features")):
        config = Config(model=name, dataset="tiny", config_dict={"data_path": tiny_data, "checkpoint_dir": str(tmp_path)})
        assert config["length_bucketing"] is True and config[recbole_key] is not None
    for name in ("GRU4Rec", "BERT4Rec", "LLMEmbGRU4Rec", "LLMEmbBERT4Rec"):
        config = Config(model=name, dataset="tiny", config_dict={"data_path": tiny_data, "checkpoint_dir": str(tmp_path)})
        assert config["train_mode"] == "prefix" and config["length_bucketing"] is True


# ---- LLMEmb on the fast backbones ------------------------------------------------------------------------
@pytest.mark.parametrize("model_name,mode", [("LLMEmbGRU4Rec", "prefix"), ("LLMEmbGRU4Rec", "all_positions"),
                                             ("LLMEmbBERT4Rec", "prefix"), ("LLMEmbBERT4Rec", "all_positions")])
def test_llmemb_backbones_are_the_fast_ones_and_train(tiny_data, tmp_path, model_name, mode):
    from test_llmemb import build as build_llm
    from test_llmemb import llm_config, write_features

    write_features(str(tmp_path / "features"), dim=16)
    config_dict_ = llm_config(tiny_data, tmp_path, align_alpha=0.01, teacher_epochs=1, embedding_size=16, hidden_size=16,
                              train_mode=mode, train_batch_size=16)
    _, _, train, model = build_llm(model_name, config_dict_)
    assert isinstance(model, GRU4Rec if "GRU4Rec" in model_name else BERT4Rec) and model.length_bucketing
    changed = train_steps(model, train)
    assert any(n.startswith("item_embedding.adapter") for n in changed)
