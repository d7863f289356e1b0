"""Cold-start protocol: which rows exist, which items are cold, training never sees them, evaluation ranks them."""

import os
import re
import subprocess
import sys
from collections import Counter

import pytest
import torch
from conftest import ROOT, tiny_config, write_tiny_dataset

from recbole_llm import Config, create_dataset, get_model
from recbole_llm.data.cold import cold_item_settings
from recbole_llm.errors import UserError
from recbole_llm.utils import data_preparation

MAX_LEN = 6


def cold_config(data, tmp_path, **overrides):
    overrides.setdefault("cold_item_ratio", 0.2)
    overrides.setdefault("MAX_ITEM_LIST_LENGTH", MAX_LEN)
    return tiny_config(data, tmp_path, **overrides)


def build(config_dict, model="SASRec"):
    from recbole_llm.quick_start import prepare_artifacts

    config = Config(model=model, dataset="tiny", config_dict=config_dict)
    prepare_artifacts(config)
    dataset = create_dataset(config)
    train, valid, test = data_preparation(config, dataset)
    return config, dataset, train, valid, test


def raw_sequences(data, dataset):
    """{internal user id: [internal item ids in time order]} read back from tiny.inter."""
    seqs = {}
    with open(os.path.join(data, "tiny", "tiny.inter")) as f:
        next(f)
        for line in f:
            user, item, t = line.rstrip("\n").split("\t")
            seqs.setdefault(user, []).append((float(t), item))
    uid, iid = dataset.field2token_id["user_id"], dataset.field2token_id["item_id"]
    return {uid[u]: [iid[i] for _, i in sorted(rows, key=lambda r: r[0])] for u, rows in seqs.items()}


def rows_of(split):
    inter = split.dataset.inter_feat
    seq, lens = inter["item_id_list"], inter["item_length"]
    return Counter(
        (int(u), tuple(int(x) for x in s[:n]), int(t))
        for u, s, n, t in zip(inter["user_id"], seq, lens, inter["item_id"])
    )


def expected_rows(seqs, cold, max_len):
    """The protocol written out: histories = warm items before the target; valid/test = the last two."""
    splits = [Counter(), Counter(), Counter()]
    for user, seq in seqs.items():
        kept = [(j, x) for j, x in enumerate(seq) if not cold[x] or j >= len(seq) - 2]
        rows = []
        for k in range(1, len(kept)):
            history = [x for _, x in kept[:k] if not cold[x]][-max_len:]
            if history:
                rows.append((user, tuple(history), kept[k][1]))
        if len(rows) >= 3:
            parts = [rows[:-2], [rows[-2]], [rows[-1]]]
        elif len(rows) == 2:
            parts = [[rows[0]], [], [rows[1]]]
        else:
            parts = [rows, [], []]
        splits[0].update(r for r in parts[0] if not cold[r[2]])
        splits[1].update(parts[1])
        splits[2].update(parts[2])
    return splits


@pytest.fixture
def data(tmp_path):
    return write_tiny_dataset(str(tmp_path / "data"), n_users=80, max_len=14)


def test_rows_follow_the_protocol_exactly(data, tmp_path):
    config, dataset, train, valid, test = build(cold_config(data, tmp_path))
    cold = dataset.cold_items
    assert int(cold.sum()) == round(0.2 * 30) and not cold[0]
    expected = expected_rows(raw_sequences(data, dataset), cold.tolist(), MAX_LEN)
    assert [rows_of(split) for split in (train, valid, test)] == expected
    # the cases that need care all occur: truncated histories, cold valid targets, cold test targets
    assert any(len(h) == MAX_LEN for _, h, _ in expected[0])
    assert any(cold[t] for _, _, t in expected[1]) and any(cold[t] for _, _, t in expected[2])


@pytest.mark.parametrize("train_mode", ["prefix", "all_positions"])
def test_no_cold_item_in_any_training_input_or_target(data, tmp_path, train_mode):
    config, dataset, train, valid, test = build(cold_config(data, tmp_path, train_mode=train_mode))
    cold = dataset.cold_items
    inter = train.dataset.inter_feat
    assert not cold[inter["item_id"]].any()
    assert not cold[inter["item_id_list"]].any()
    if train_mode == "all_positions":
        assert not cold[inter["item_id_target_list"]].any()
    for split in (valid, test):  # eval histories are warm too; some eval targets are cold
        assert not cold[split.dataset.inter_feat["item_id_list"]].any()
        assert cold[split.dataset.inter_feat["item_id"]].any()


def test_same_seed_same_cold_set_whatever_the_file_order(data, tmp_path):
    def cold_tokens(folder, **overrides):
        _, dataset, *_ = build(cold_config(folder, tmp_path, **overrides))
        tokens = dataset.field2id_token["item_id"]
        return sorted(tokens[i] for i in torch.nonzero(dataset.cold_items).view(-1).tolist())

    base = cold_tokens(data)
    assert cold_tokens(data) == base
    assert cold_tokens(data, seed=7, cold_item_seed=2024) == base  # cold_item_seed wins over seed
    assert cold_tokens(data, cold_item_seed=1) != base
    # the same interactions in another line order: other internal ids, the same cold items
    shuffled = str(tmp_path / "shuffled")
    os.makedirs(os.path.join(shuffled, "tiny"))
    with open(os.path.join(data, "tiny", "tiny.inter")) as f:
        header, *lines = f.readlines()
    with open(os.path.join(shuffled, "tiny", "tiny.inter"), "w") as f:
        f.writelines([header] + lines[::-1])
    assert cold_tokens(shuffled) == base


def test_newest_selection_takes_the_items_first_seen_last(tmp_path):
    folder = str(tmp_path / "data")
    os.makedirs(os.path.join(folder, "tiny"))
    with open(os.path.join(folder, "tiny", "tiny.inter"), "w") as f:
        f.write("user_id:token\titem_id:token\ttimestamp:float\n")
        for u in range(10):  # item iK first appears at time 10 * K
            for k in range(10):
                f.write(f"u{u}\ti{(k + u) % 10}\t{10 * ((k + u) % 10) + u}\n")
    _, dataset, *_ = build(cold_config(folder, tmp_path, cold_item_selection="newest", load_col={"inter": ["user_id", "item_id", "timestamp"]}))
    tokens = dataset.field2id_token["item_id"]
    assert sorted(tokens[i] for i in torch.nonzero(dataset.cold_items).view(-1).tolist()) == ["i8", "i9"]


@pytest.mark.parametrize(
    "overrides, key",
    [
        ({"cold_item_ratio": 1.5}, "cold_item_ratio"),
        ({"cold_item_ratio": "a lot"}, "cold_item_ratio"),
        ({"cold_item_selection": "oldest"}, "cold_item_selection"),
        ({"cold_item_seed": "x"}, "cold_item_seed"),
        ({"eval_args": {"split": {"RS": [0.8, 0.1, 0.1]}}}, "leave-one-out"),
        ({"cold_item_ratio": 0.001}, "selects no item"),
    ],
)
def test_bad_settings_name_the_key(data, tmp_path, overrides, key):
    with pytest.raises(UserError, match=key):
        build(cold_config(data, tmp_path, **overrides))


def test_off_by_default(data, tmp_path):
    config, dataset, train, valid, test = build(tiny_config(data, tmp_path))
    assert cold_item_settings(config)[0] == 0.0 and getattr(dataset, "cold_items", None) is None


def trainer_for(config, model):
    from recbole_llm.utils import get_trainer

    return get_trainer(config["MODEL_TYPE"], config["model"])(config, model)


@pytest.mark.parametrize("mode", ["full", "uni100"])
def test_cold_items_are_ranked_at_evaluation(data, tmp_path, mode):
    """A model that scores cold items highest hits every cold target: evaluation ranks them like any item."""
    config, dataset, train, valid, test = build(cold_config(data, tmp_path, eval_args={"mode": mode}))
    model = get_model("SASRec")(config, train.dataset)
    cold = dataset.cold_items.float()
    model.full_sort_predict = lambda interaction: cold.unsqueeze(0).expand(len(interaction), -1) * 100.0
    model.predict = lambda interaction: cold[interaction["item_id"]] * 100.0
    trainer = trainer_for(config, model)
    trainer.eval_collector.data_collect(train)
    result = trainer.evaluate(test, load_best_model=False)
    assert result["hit_cold@10"] == 1.0 and result["targets_cold"] > 0
    assert result["targets_cold"] + result["targets_warm"] == len(test.dataset.inter_feat)
    assert result["hit_warm@10"] < 1.0


@pytest.mark.parametrize("model_name", ["SASRec", "BERT4Rec"])
def test_training_never_touches_cold_item_rows(data, tmp_path, model_name):
    """Not an input, not a target, not a softmax negative: a CE model's cold rows keep their initial values."""
    from recbole_llm.data.cold import ColdMaskedCrossEntropyLoss, exclude_cold_items_from_loss

    config, dataset, train, valid, test = build(cold_config(data, tmp_path, train_mode="all_positions"), model_name)
    model = get_model(model_name)(config, train.dataset)
    assert exclude_cold_items_from_loss(model, train.dataset)
    assert isinstance(model.loss_fct, ColdMaskedCrossEntropyLoss)
    cold = dataset.cold_items
    before = model.item_embedding.weight.detach().clone()
    optimizer = torch.optim.Adam(model.parameters(), lr=0.01)
    for _, batch in zip(range(3), train):
        loss = model.calculate_loss(batch)
        assert torch.isfinite(loss)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    after = model.item_embedding.weight.detach()
    n = len(cold)
    assert torch.equal(after[:n][cold], before[:n][cold])
    assert not torch.equal(after[:n][~cold], before[:n][~cold])


def test_masked_cross_entropy_equals_cross_entropy_over_warm_items():
    from recbole_llm.data.cold import ColdMaskedCrossEntropyLoss

    cold = torch.tensor([False, False, True, False, True])
    logits = torch.randn(4, 5)
    target = torch.tensor([0, 1, 3, 3])
    masked = ColdMaskedCrossEntropyLoss(cold, torch.nn.CrossEntropyLoss())(logits, target)
    warm = torch.tensor([0, 1, 3])
    reference = torch.nn.functional.cross_entropy(logits[:, warm], torch.tensor([0, 1, 2, 2]))
    torch.testing.assert_close(masked, reference)


def test_teacher_and_similar_users_see_the_same_cold_items(data, tmp_path):
    from recbole_llm.model.teacher import teacher_config, teacher_path

    def teacher(**overrides):
        config = Config(model="LLMEmbSASRec", dataset="tiny",
                        config_dict=cold_config(data, tmp_path, feature_dir=str(tmp_path / "f"), llm_feature="rand", **overrides))
        return teacher_config(config, 16), teacher_path(config, 16)

    settings, path = teacher(seed=5)
    assert settings["cold_item_seed"] == 5 and settings["cold_item_ratio"] == 0.2 and settings["seed"] == 2020
    assert teacher(seed=6)[1] != path  # another cold set, another teacher
    assert teacher(seed=5, cold_item_ratio=0.0)[1] != path


def test_command_line_prints_cold_and_warm_metrics(data, tmp_path):
    out = subprocess.run(
        [sys.executable, os.path.join(ROOT, "run_recbole_llm.py"), "--model=SASRec", "--dataset=tiny", f"--data_path={data}",
         "--cold_item_ratio=0.2", "--epochs=1", "--load_col={'inter': ['user_id', 'item_id', 'timestamp']}", "--state=WARNING", f"--checkpoint_dir={tmp_path / 'saved'}", "--show_progress=False"],
        capture_output=True, text=True, timeout=300, cwd=str(tmp_path),
    )
    assert out.returncode == 0, out.stderr[-2000:]
    assert "'ndcg_cold@10': " in out.stdout and "'ndcg_warm@10': " in out.stdout
    assert re.search(r"'targets_cold': \d+,", out.stdout)  # a count, printed as one


def test_teacher_of_other_cold_items_is_rejected(data, tmp_path):
    from recbole_llm.model.teacher import TeacherError, check_teacher_cold_items

    _, dataset, *_ = build(cold_config(data, tmp_path, seed=3))
    same = {"teacher_config": {"cold_item_ratio": 0.2, "cold_item_selection": "random", "cold_item_seed": 3}}
    check_teacher_cold_items(same, "t.pth", dataset)
    with pytest.raises(TeacherError, match="saw this run's cold items"):
        check_teacher_cold_items({"teacher_config": dict(same["teacher_config"], cold_item_seed=4)}, "t.pth", dataset)
    with pytest.raises(TeacherError, match="does not say"):
        check_teacher_cold_items({"state_dict": {}}, "t.pth", dataset)


def test_learn_random_negatives_skip_cold_items(data, tmp_path):
    from recbole_llm.data.cold import exclude_cold_items_from_loss
    from recbole_llm.model.sequential_recommender import learn

    config, dataset, train, valid, test = build(
        cold_config(data, tmp_path, train_mode="all_positions", learn_random_negatives=50, feature_dir=str(tmp_path / "f"),
                    llm_path="minilm", embedding_size=16), "LEARN")
    model = get_model("LEARN")(config, train.dataset)
    assert exclude_cold_items_from_loss(model, train.dataset)
    drawn = []
    original = learn.dense_all_action_loss
    learn.dense_all_action_loss = lambda *args: drawn.append(args[-1]) or original(*args)
    try:
        for _, batch in zip(range(3), train):
            assert torch.isfinite(model.calculate_loss(batch))
    finally:
        learn.dense_all_action_loss = original
    assert drawn and not dataset.cold_items[torch.cat(drawn)].any()
