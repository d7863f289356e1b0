"""Training-speed paths: anomaly detection off, length-bucketed encoding, the all-positions train mode."""

import pytest
import torch
from conftest import tiny_config, assert_reproduces

from recbole_llm import Config, create_dataset, get_model, run_recbole_llm
from recbole_llm.model.layers import bucketed_encode, length_groups
from recbole_llm.utils import data_preparation


def build(tiny_data, tmp_path, **overrides):
    config = Config(model="SASRec", dataset="tiny", config_dict=tiny_config(tiny_data, tmp_path, **overrides))
    dataset = create_dataset(config)
    train, valid, test = data_preparation(config, dataset)
    model = get_model("SASRec")(config, train.dataset)
    return config, model, train


def anomaly_flags_during_backward(config_dict):
    """torch.is_anomaly_enabled() at every backward of a training run."""
    seen = []
    original = torch.Tensor.backward

    def spy(self, *args, **kwargs):
        seen.append(torch.is_anomaly_enabled())
        return original(self, *args, **kwargs)

    torch.Tensor.backward = spy
    try:
        run_recbole_llm(model="SASRec", dataset="tiny", config_dict=config_dict)
    finally:
        torch.Tensor.backward = original
        torch.autograd.set_detect_anomaly(False)
    return seen


def test_anomaly_detection_is_off_inside_training(tiny_data, tmp_path):
    import recbole.model.sequential_recommender.sine  # noqa: F401  (the module that switches it on)

    seen = anomaly_flags_during_backward(tiny_config(tiny_data, tmp_path))
    assert seen and not any(seen)


def test_anomaly_detection_can_be_switched_on_for_debugging(tiny_data, tmp_path):
    seen = anomaly_flags_during_backward(tiny_config(tiny_data, tmp_path, detect_anomaly=True))
    assert seen and all(seen)


def test_length_groups_cover_every_row_once():
    lengths = torch.tensor([1, 50, 3, 4, 17, 2, 50, 1, 9])
    groups = length_groups(lengths, 50)
    rows = torch.cat([idx for idx, _ in groups]).sort().values
    assert rows.tolist() == list(range(len(lengths)))
    for idx, cut in groups:
        assert cut == int(lengths[idx].max()) and cut <= 50


@pytest.mark.parametrize("bidirectional", [False, True])
def test_bucketed_encoder_equals_padded(tiny_data, tmp_path, bidirectional):
    _, model, _ = build(tiny_data, tmp_path, MAX_ITEM_LIST_LENGTH=10, n_layers=2, n_heads=2, bidirectional_attention=bidirectional)
    model.eval()
    torch.manual_seed(0)
    lengths = torch.tensor([1, 10, 3, 7, 2, 10, 5, 1, 4])
    seq = torch.zeros(len(lengths), 10, dtype=torch.long)
    for row, length in enumerate(lengths.tolist()):
        seq[row, :length] = torch.randint(1, model.n_items, (length,))
    with torch.no_grad():
        padded_all = model.encode_sequence(seq)
        padded_last = model.gather_indexes(padded_all, lengths - 1)
        model.length_bucketing = True
        bucket_last = model.forward(seq, lengths)
        bucket_all = model.encode_all(seq, lengths)
        model.length_bucketing = False
        plain_last = model.forward(seq, lengths)
    torch.testing.assert_close(bucket_last, padded_last, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(plain_last, padded_last)
    for row, length in enumerate(lengths.tolist()):  # every real position, not only the last
        torch.testing.assert_close(bucket_all[row, :length], padded_all[row, :length], rtol=1e-5, atol=1e-5)
    # the check can fail: a causal model must differ from a bidirectional one on a long sequence
    model.bidirectional_attention = not bidirectional
    with torch.no_grad():
        other = model.encode_sequence(seq)
    assert not torch.allclose(other[1, :9], padded_all[1, :9], atol=1e-4)


def test_bucketed_encode_calls_short_cuts():
    cuts = []

    def encode(seq):
        cuts.append(seq.size(1))
        return seq.float().unsqueeze(-1).repeat(1, 1, 3)

    seq = torch.tensor([[5, 0, 0, 0], [1, 2, 3, 4], [7, 8, 0, 0]])
    out = bucketed_encode(encode, seq, torch.tensor([1, 4, 2]), gather_last=True)
    assert sorted(cuts) == [1, 2, 4]
    assert out[:, 0].tolist() == [5.0, 4.0, 8.0]


def test_all_positions_rows_and_targets(tiny_data, tmp_path):
    config, model, train = build(tiny_data, tmp_path, train_mode="all_positions", MAX_ITEM_LIST_LENGTH=20)
    prefix_config, _, prefix_train = build(tiny_data, tmp_path, MAX_ITEM_LIST_LENGTH=20)
    ds, prefix = train.dataset, prefix_train.dataset
    uid = ds.uid_field
    assert len(ds.inter_feat) == len(torch.unique(prefix.inter_feat[uid]))
    seq, seq_len = ds.inter_feat["item_id_list"], ds.inter_feat["item_length"]
    targets = ds.inter_feat["item_id_target_list"]
    for row in range(len(seq)):
        n = int(seq_len[row])
        user = ds.inter_feat[uid][row]
        rows = prefix.inter_feat[prefix.inter_feat[uid] == user]
        longest = int(rows["item_length"].max())
        assert n == longest
        full = rows["item_id_list"][rows["item_length"].argmax()][:n].tolist() + [int(rows["item_id"][rows["item_length"].argmax()])]
        assert seq[row, :n].tolist() == full[:-1]
        assert targets[row, :n].tolist() == full[1:]
    batch = next(iter(train))
    assert "item_id_target_list" in batch
    loss = model.calculate_loss(batch)
    assert torch.isfinite(loss) and loss.requires_grad


@pytest.mark.parametrize("mode,loss", [("prefix", "BCE"), ("all_positions", "CE"), ("all_positions", "BCE")])
def test_train_modes_and_losses_run(tiny_data, tmp_path, mode, loss):
    result = run_recbole_llm(model="SASRec", dataset="tiny", config_dict=tiny_config(tiny_data, tmp_path, train_mode=mode, loss_type=loss))
    assert_reproduces(result)


def test_bad_train_mode(tiny_data, tmp_path):
    with pytest.raises(ValueError, match="train_mode"):
        build(tiny_data, tmp_path, train_mode="everything")
