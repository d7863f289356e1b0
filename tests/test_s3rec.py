"""The plugin's S3Rec: exact length bucketing, vectorised pre-training data, RecBole's pre-training loss,
pre-training on one row per user, and both stages from one command."""

import os
import random

import pytest
import torch
from conftest import tiny_config, assert_reproduces
from recbole.model.sequential_recommender.s3rec import S3Rec as RecBoleS3Rec

import recbole_llm.model.layers as layers
from recbole_llm import Config, create_dataset, get_model, run_recbole_llm
from recbole_llm.model.sequential_recommender.s3rec import S3Rec
from recbole_llm.utils import data_preparation

ITEM_COLS = {"inter": ["user_id", "item_id", "timestamp"], "item": ["item_id", "categories"]}
MAX_LEN = 10
LENGTHS = torch.tensor([1, MAX_LEN, 3, 7, 2, MAX_LEN, 5, 1, 4, 9, 6, 2])


def s3rec_config(tiny_data, tmp_path, **overrides):
    extra = dict(load_col=ITEM_COLS, item_attribute="categories", n_layers=2, n_heads=2, pretrain_epochs=1, save_step=1)
    extra.update(overrides)
    return tiny_config(tiny_data, tmp_path, **extra)


def build(tiny_data, tmp_path, **overrides):
    config = Config(model="S3Rec", dataset="tiny", config_dict=s3rec_config(tiny_data, tmp_path, **overrides))
    dataset = create_dataset(config)
    train, valid, test = data_preparation(config, dataset)
    torch.manual_seed(0)
    return config, get_model("S3Rec")(config, train.dataset), train, test


def random_sequences(n_real_items, lengths, max_len=MAX_LEN, seed=0, left_padded=False):
    """(B, max_len) sequences of distinct real items (1..n_real_items), left-aligned or left-padded."""
    generator = torch.Generator().manual_seed(seed)
    seq = torch.zeros(len(lengths), max_len, dtype=torch.long)
    for row, length in enumerate(lengths.tolist()):
        items = torch.randperm(n_real_items, generator=generator)[:length] + 1
        if left_padded:
            seq[row, max_len - length :] = items
        else:
            seq[row, :length] = items
    return seq


def real_positions(lengths, max_len=MAX_LEN, left_padded=False):
    positions = torch.arange(max_len).unsqueeze(0)
    if left_padded:
        return positions >= max_len - lengths.unsqueeze(1)
    return positions < lengths.unsqueeze(1)


def states(model, bidirectional, left_padded):
    seq = random_sequences(model.n_items - 2, LENGTHS, left_padded=left_padded)
    if left_padded:  # pre-training sequences also hold mask tokens
        seq[0, -1] = seq[3, -2] = model.mask_token
    return model.forward(seq, bidirectional=bidirectional)[real_positions(LENGTHS, left_padded=left_padded)]


def spy_on_groups(monkeypatch):
    cuts = []
    original = layers.length_groups

    def spy(*args, **kwargs):
        groups = original(*args, **kwargs)
        cuts.extend(cut for _, cut in groups)
        return groups

    monkeypatch.setattr(layers, "length_groups", spy)
    monkeypatch.setattr("recbole_llm.model.sequential_recommender.s3rec.length_groups", spy)
    return cuts


# ---- exact bucketing --------------------------------------------------------------------------------
def test_bucketed_finetune_and_pretrain_states_equal_unbucketed_in_eval(tiny_data, tmp_path, monkeypatch):
    _, model, _, test = build(tiny_data, tmp_path)
    assert type(model) is S3Rec and isinstance(model, RecBoleS3Rec) and model.length_bucketing
    model.eval()
    cuts = spy_on_groups(monkeypatch)
    batch = next(iter(test))[0]
    layouts = [(False, False), (True, True), (False, True)]  # fine-tuning, pre-training, causal left-padded
    with torch.no_grad():
        bucketed = [states(model, bidirectional, left) for bidirectional, left in layouts]
        bucketed_scores, bucketed_predict = model.full_sort_predict(batch), model.predict(batch)
        n_cuts = len(cuts)
        model.length_bucketing = False
        padded = [states(model, bidirectional, left) for bidirectional, left in layouts]
        padded_scores, padded_predict = model.full_sort_predict(batch), model.predict(batch)
        recbole_scores = RecBoleS3Rec.full_sort_predict(model, batch)
    assert n_cuts > 6 and min(cuts) < MAX_LEN  # several groups per layout, cut short
    torch.testing.assert_close(padded_scores, recbole_scores)
    for ours, theirs in zip(bucketed, padded):
        torch.testing.assert_close(ours, theirs, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(bucketed_scores, padded_scores, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(bucketed_predict, padded_predict, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("broken", ["no_padding_mask", "positions_from_zero"])
def test_the_exactness_check_can_fail(tiny_data, tmp_path, monkeypatch, broken):
    """Without the padding mask, or with a cut left-padded group numbered from position 0, bucketing changes states."""
    _, model, _, _ = build(tiny_data, tmp_path)
    model.eval()
    if broken == "no_padding_mask":
        zeros = lambda seq, bidirectional=False: torch.zeros(seq.size(0), 1, seq.size(1), seq.size(1))  # noqa: E731
        monkeypatch.setattr(model, "get_attention_mask", zeros)
        layouts = [(False, False), (True, True)]
    else:
        original = model.encode_positions
        monkeypatch.setattr(model, "encode_positions", lambda seq, first, bidirectional: original(seq, 0, bidirectional))
        layouts = [(True, True)]
    with torch.no_grad():
        bucketed = [states(model, bidirectional, left) for bidirectional, left in layouts]
        model.length_bucketing = False
        padded = [states(model, bidirectional, left) for bidirectional, left in layouts]
    for ours, theirs in zip(bucketed, padded):
        assert not torch.allclose(ours, theirs, rtol=1e-5, atol=1e-5)


# ---- pre-training data and loss -----------------------------------------------------------------------
def test_pretrain_loss_equals_recboles_on_the_same_data(tiny_data, tmp_path):
    """Counted positions only + bucketed passes: RecBole's pretrain value on RecBole's own reconstructed data."""
    _, model, _, _ = build(tiny_data, tmp_path)
    model.eval()
    seq = random_sequences(model.n_items - 2, LENGTHS)
    random.seed(1)
    data = RecBoleS3Rec.reconstruct_pretrain_data(model, seq, LENGTHS)
    assert (data[1] == model.mask_token).any() and data[0].sum() > 0
    with torch.no_grad():
        ours = model.pretrain(*data)
        ours_lookup = model.pretrain(None, *data[1:])  # attributes looked up, not read from the dense tensor
        model.length_bucketing = False
        recbole = RecBoleS3Rec.pretrain(model, *data)
    torch.testing.assert_close(ours, recbole, rtol=1e-5, atol=1e-4)
    torch.testing.assert_close(ours_lookup, recbole, rtol=1e-5, atol=1e-4)


def test_vectorised_reconstruction_obeys_recboles_contract(tiny_data, tmp_path):
    _, model, _, _ = build(tiny_data, tmp_path)
    seq = random_sequences(model.n_items - 2, LENGTHS)
    random.seed(0)
    expected = RecBoleS3Rec.reconstruct_pretrain_data(model, seq.clone(), LENGTHS)
    torch.manual_seed(0)
    ours = model.reconstruct_pretrain_data(seq, LENGTHS)
    for a, b in zip(ours, expected):
        assert a.shape == b.shape and a.dtype == b.dtype
    features, masked_seq, pos, neg, masked_segment, pos_segment, neg_segment = ours
    assert torch.equal(features, expected[0]) and torch.equal(pos, expected[2])  # deterministic parts: RecBole's
    real = real_positions(LENGTHS, left_padded=True)
    long_sequence = seq[real_positions(LENGTHS)].tolist()
    mask = model.mask_token
    for row, length in enumerate(LENGTHS.tolist()):
        items = pos[row, -length:].tolist()
        assert not pos[row, :-length].any()
        for sequence in (masked_seq, neg, masked_segment, pos_segment, neg_segment):
            assert not sequence[row, ~real[row]].any()  # left padding
        masked = masked_seq[row] == mask
        assert torch.equal(masked_seq[row, ~masked], pos[row, ~masked]) and torch.equal(neg[row, ~masked], pos[row, ~masked])
        for item in neg[row, masked].tolist():
            assert item not in items and 1 <= item < mask
        segment = (masked_segment[row] == mask).nonzero().squeeze(1).tolist()
        if length < 2:
            assert not segment and all(torch.equal(s[row], pos[row]) for s in (pos_segment, neg_segment))
            continue
        start, n = segment[0] - (MAX_LEN - length), len(segment)
        assert 1 <= n <= length // 2 and segment == list(range(segment[0], segment[0] + n))  # one run inside
        in_segment = torch.zeros(MAX_LEN, dtype=torch.bool)
        in_segment[segment] = True
        assert torch.equal(masked_segment[row, ~in_segment], pos[row, ~in_segment])
        assert torch.equal(pos_segment[row, in_segment], pos[row, in_segment])
        assert (pos_segment[row, real[row] & ~in_segment] == mask).all() and (neg_segment[row, real[row] & ~in_segment] == mask).all()
        negative = neg_segment[row, in_segment].tolist()
        assert any(long_sequence[i : i + n] == negative for i in range(len(long_sequence) - n + 1))
        assert items[start : start + n] == pos_segment[row, in_segment].tolist()


def test_vectorised_reconstruction_has_recboles_distributions(tiny_data, tmp_path):
    """Mask rate, segment lengths and starts over many draws: RecBole's loops against the vectorised version."""
    _, model, _, _ = build(tiny_data, tmp_path)
    lengths = torch.full((64,), 8)
    seq = random_sequences(model.n_items - 2, lengths)
    random.seed(0)
    torch.manual_seed(0)

    def stats(reconstruct):
        mask_rate, segment_lengths, starts = [], torch.zeros(5), torch.zeros(MAX_LEN)
        for _ in range(25):
            _, masked_seq, _, _, masked_segment, _, _ = reconstruct(seq, lengths)
            mask_rate.append((masked_seq == model.mask_token).float().sum() / lengths.sum())
            segment = masked_segment == model.mask_token
            segment_lengths += torch.bincount(segment.sum(1), minlength=5)[:5]
            starts += torch.bincount(segment.float().argmax(1), minlength=MAX_LEN)
        return torch.stack(mask_rate).mean(), segment_lengths / segment_lengths.sum(), starts / starts.sum()

    ours, recbole = stats(model.reconstruct_pretrain_data), stats(lambda s, n: RecBoleS3Rec.reconstruct_pretrain_data(model, s.clone(), n))
    assert abs(ours[0] - model.mask_ratio) < 0.02 and abs(recbole[0] - model.mask_ratio) < 0.02
    assert ours[1][0] == 0 and torch.allclose(ours[1][1:], torch.full((4,), 0.25), atol=0.05)  # randint(1, 8 // 2)
    torch.testing.assert_close(ours[1], recbole[1], rtol=0, atol=0.05)
    torch.testing.assert_close(ours[2], recbole[2], rtol=0, atol=0.05)


def test_user_rows_pretrain_on_the_whole_training_sequence(tiny_data, tmp_path):
    _, model, _, _ = build(tiny_data, tmp_path, MAX_ITEM_LIST_LENGTH=6)
    seq = torch.tensor([[3, 4, 5, 0, 0, 0], [1, 2, 3, 4, 5, 6]])
    batch = {"item_id_list": seq, "item_length": torch.tensor([3, 6]), "item_id": torch.tensor([7, 8]),
             "item_id_target_list": torch.zeros_like(seq)}
    whole, lengths = model.pretrain_input(batch)
    assert whole.tolist() == [[3, 4, 5, 7, 0, 0], [2, 3, 4, 5, 6, 8]] and lengths.tolist() == [4, 6]
    with pytest.raises(KeyError, match="one row per user|item_id_target_list"):
        model.pretrain_input({k: v for k, v in batch.items() if k != "item_id_target_list"})
    model.pretrain_rows = "prefix"
    assert model.pretrain_input(batch)[0] is seq


# ---- one command ----------------------------------------------------------------------------------------
@pytest.mark.parametrize("rows", ["user", "prefix"])
def test_pretrain_then_finetune_from_one_command(tiny_data, tmp_path, monkeypatch, rows):
    seen = []
    original = S3Rec.calculate_loss

    def spy(self, interaction):
        seen.append((self.train_stage, len(interaction), "item_id_target_list" in interaction))
        return original(self, interaction)

    monkeypatch.setattr(S3Rec, "calculate_loss", spy)
    config = s3rec_config(tiny_data, tmp_path, pretrain_epochs=2, epochs=1, pretrain_rows=rows, train_batch_size=512, pretrain_batch_size=512)
    result = run_recbole_llm(model="S3Rec", dataset="tiny", config_dict=config)
    assert result["model_file"].endswith("-finetuned.pth") and os.path.isfile(result["model_file"])
    assert os.path.isfile(result["model_file"].replace("-finetuned.pth", "-pretrained-weights.pth"))
    assert_reproduces(result)
    pretrain = [s for s in seen if s[0] == "pretrain"]
    finetune = [s for s in seen if s[0] == "finetune"]
    assert len(pretrain) == 2 and len(finetune) == 1  # one batch per epoch
    assert finetune[0][1] > 40 and not finetune[0][2]  # fine-tuning: RecBole's prefix rows
    if rows == "user":
        assert all(n == 40 and target_list for _, n, target_list in pretrain)  # one row per user (40 users)
    else:
        assert all(n == finetune[0][1] and not target_list for _, n, target_list in pretrain)


def test_pretrain_batch_size_sets_the_pretraining_batches(tiny_data, tmp_path):
    from recbole_llm.utils import get_trainer

    config, model, train, _ = build(tiny_data, tmp_path, pretrain_batch_size=16, train_batch_size=64)
    trainer = get_trainer(config["MODEL_TYPE"], "S3Rec")(config, model)
    loader = trainer.pretrain_data(train)
    assert len(loader.dataset) == 40 and [len(b) for b in loader] == [16, 16, 8]  # one row per user
    assert trainer.pretrain_data(train) is loader and config["train_batch_size"] == 64 == train._batch_size
    model.pretrain_rows = "prefix"
    trainer._pretrain_data = None
    assert len(trainer.pretrain_data(train).dataset) == len(train.dataset) and next(iter(trainer.pretrain_data(train))).length == 16
    config["pretrain_batch_size"] = None
    trainer._pretrain_data = None
    assert trainer.pretrain_data(train) is train  # RecBole's rows and batches
