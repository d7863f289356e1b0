"""The parity harness without the official code: exported files read back as the official loaders read them
(readers written from their documented formats), the evaluator cross-check, the shim's patches, log parsing."""

import argparse
import json
import os
import pickle
from collections import defaultdict

import numpy as np
import pytest
import torch
from recbole.evaluator.collector import DataStruct
from recbole.evaluator.metrics import NDCG, Hit

from recbole_llm.compat import numpy_compatibility_settings
from recbole_llm.evaluator.longtail import GROUPED_METRICS, ITEM_POP_KEY, TARGET_KEY, USER_KEY, USER_LEN_KEY
from recbole_llm.parity import official, protocol
from recbole_llm.parity.export import (
    ParityData, ParityError, check_against_split, check_negatives, dense_sequences, tail_thresholds, user_sequences_in_time_order,
    write_handled, write_learn,
)
from recbole_llm.parity.shim import PlainParallel, patch_dataset_choices

numpy_compatibility_settings()

SEQS = [[1, 2, 3, 4], [2, 3, 5], [5, 1, 2, 6, 3], [4, 6, 1]]  # users 1..4, items 1..6


def tiny_data():
    rng = np.random.default_rng(0)
    data = ParityData(sequences=[list(s) for s in SEQS], n_items=6, user_tokens=["[PAD]", "a", "b", "c", "d"],
                      item_tokens=["[PAD]"] + [f"i{k}" for k in range(1, 7)])
    data.tables = {"llm": rng.normal(size=(6, 8)).astype(np.float32), "pca": rng.normal(size=(6, 4)).astype(np.float32)}
    data.similar = np.array([[1, 2], [0, 3], [3, 0], [2, 1]])
    return data


# ---- readers written from the official formats -------------------------------------------------------------
def read_like_llmesr_generator(folder):
    """generators/generator.py: inter.txt -> {u: items}; train = all but the last two, valid, test."""
    users = defaultdict(list)
    with open(os.path.join(folder, "inter.txt")) as f:
        for line in f:
            u, i = line.rstrip().split(" ")
            users[int(u)].append(int(i))
    train = {u: s[:-2] for u, s in users.items()}
    return users, train, {u: [s[-2]] for u, s in users.items()}, {u: [s[-1]] for u, s in users.items()}


def official_table(folder, stem):
    """models/DualLLMSRS.py: the pickle with a zero row prepended (row 0 = padding), then one appended."""
    table = pickle.load(open(os.path.join(folder, f"{stem}.pkl"), "rb"))
    table = np.insert(table, 0, values=np.zeros((1, table.shape[1])), axis=0)
    return np.concatenate([table, np.zeros((1, table.shape[1]))], axis=0)


def test_handled_files_read_back_in_the_official_shapes_and_orders(tmp_path):
    data = tiny_data()
    folder = write_handled(data, str(tmp_path / "data" / "x" / "handled"), {"itm_emb_np": "llm", "pca64_itm_emb_np": "pca"})
    users, train, valid, test = read_like_llmesr_generator(folder)
    assert list(users) == [1, 2, 3, 4] and max(max(s) for s in users.values()) == 6  # their user_num / item_num
    assert [users[u] for u in users] == SEQS and test[3] == [3] and valid[3] == [6] and train[3] == [5, 1, 2]
    llm = official_table(folder, "itm_emb_np")
    assert llm.shape == (8, 8) and np.allclose(llm[3], data.tables["llm"][2]) and not llm[0].any()
    assert np.allclose(official_table(folder, "pca64_itm_emb_np")[6], data.tables["pca"][5])
    sims = pickle.load(open(os.path.join(folder, "sim_user_100.pkl"), "rb"))
    # their Seq2SeqDatasetAllUser: self.data = list(users) order; sims[index] are indices into it
    data_list = [train[u] for u in users]
    assert sims.shape == (4, 2) and data_list[sims[0][0]] == train[2] and data_list[sims[2][0]] == train[4]


def test_learn_files_read_back_as_their_loaders_do(tmp_path):
    lmdb = pytest.importorskip("lmdb")
    data = tiny_data()
    write_learn(data, str(tmp_path), "Tiny", "llm")
    base = tmp_path / "amazon_2018" / "finetune_data"
    smap = json.load(open(base / "Tiny" / "smap.json"))
    product2emb = pickle.load(open(base / "product2emb_Tiny.pkl", "rb"))
    gallery = np.stack([product2emb[p] for p in smap])  # AmazonDatasetFinetune.idx2embedding, smap order
    assert gallery.shape == (6, 4096) and not gallery[:, 8:].any()
    assert np.allclose(gallery[smap["i4"], :8], data.tables["llm"][3])
    train = json.load(open(base / "Tiny" / "train_product.json"))
    val, test = (json.load(open(base / "Tiny" / f"{s}_product.json")) for s in ("val", "test"))
    assert train["3"] == ["i5", "i1", "i2"] and val["3"] == ["i6"] and test["3"] == ["i3"]
    assert json.load(open(base / "Tiny" / "umap.json"))["c"] == 3 and all(int(u) for u in test)  # int(userid)
    env = lmdb.open(str(base / "Tiny_lmdb"), readonly=True, lock=False)
    with env.begin(buffers=True) as txn:  # AmazonDatasetTestUser.itemid_to_emb
        vector = pickle.loads(txn.get("i2".encode("utf-8")).tobytes())
    assert np.allclose(vector[:8], data.tables["llm"][1])
    env.close()


def test_a_second_learn_export_replaces_the_store(tmp_path):
    """Re-exporting into an earlier scratch copy wrote into the old LMDB (its map filled up on scientific; stale
    items stayed): now a fresh store with exactly this export's items, no temp folder left."""
    lmdb = pytest.importorskip("lmdb")
    data = tiny_data()
    write_learn(data, str(tmp_path), "Tiny", "llm")
    store = tmp_path / "amazon_2018" / "finetune_data" / "Tiny_lmdb"
    env = lmdb.open(str(store), map_size=1 << 26)
    with env.begin(write=True) as txn:
        txn.put(b"stale", pickle.dumps(np.zeros(4096, dtype=np.float32)))
    env.close()
    data.tables["llm"] = data.tables["llm"] * 2
    write_learn(data, str(tmp_path), "Tiny", "llm")
    env = lmdb.open(str(store), readonly=True, lock=False)
    with env.begin(buffers=True) as txn:
        keys = sorted(bytes(k).decode() for k, _ in txn.cursor())
        vector = pickle.loads(txn.get(b"i2").tobytes())
    env.close()
    assert keys == sorted(data.item_tokens[1:]) and np.allclose(vector[:8], data.tables["llm"][1])
    assert sorted(os.listdir(store.parent)) == ["Tiny", "Tiny_lmdb", "product2emb_Tiny.pkl"]


def test_sequences_checked_against_recbole_split_and_thresholds():
    by_user = user_sequences_in_time_order([2, 1, 1, 2, 1, 2], [7, 3, 4, 8, 5, 9], [0, 2, 1, 1, 0, 2])
    assert by_user == {1: [5, 4, 3], 2: [7, 8, 9]}
    check_against_split(by_user, {"valid": ([1, 2], [4, 8]), "test": ([1, 2], [3, 9])})
    with pytest.raises(ParityError, match="position -1"):
        check_against_split(by_user, {"valid": ([1], [4]), "test": ([1], [4])})
    with pytest.raises(ParityError, match="fewer than 3"):
        dense_sequences({1: [1, 2]}, 1)
    # training popularity (all but the last two) of items 1..6: [2, 3, 0, 1, 1, 0]: 4 of 6 below 2, 5 of 6 below 3;
    # training lengths [2, 1, 3, 1]: median 1.5, rounded up
    assert tail_thresholds(SEQS, 6) == (3, 2)
    # they draw from 1..(largest id in inter.txt) = 6; user 3 has 5 distinct items: 1 left outside its sequence
    check_negatives(SEQS, 6, test_neg=1)
    with pytest.raises(ParityError, match="loop forever"):
        check_negatives(SEQS, 200, test_neg=2)  # items beyond the largest id in inter.txt do not count


# ---- the evaluator cross-check ---------------------------------------------------------------------------------
SCORES = np.array([  # column 0 = the target, 1..5 sampled negatives; k = 3
    [0.9, 0.1, 0.2, 0.3, 0.0, 0.4],  # rank 0
    [0.5, 0.6, 0.7, 0.1, 0.2, 0.3],  # rank 2
    [0.1, 0.9, 0.8, 0.7, 0.6, 0.5],  # rank 5: miss
    [0.4, 0.5, 0.1, 0.2, 0.3, 0.0],  # rank 1
])
TARGETS = np.array([4, 5, 3, 1])  # the users' test items (last of SEQS)


def ours_on_scores(pop, user_len, users, k=3, tail=2, short=3):
    """Our metrics from the same score matrix, as RecBole's collector builds rec.topk for sampled candidates."""
    top = torch.topk(torch.tensor(SCORES), k, dim=1).indices
    topk = torch.cat([(top == 0).int(), torch.ones(len(SCORES), 1, dtype=torch.int)], dim=1)
    struct = DataStruct()
    for key, value in (("rec.topk", topk), (TARGET_KEY, torch.tensor(TARGETS)), (USER_KEY, torch.tensor(users)),
                       (ITEM_POP_KEY, torch.tensor(pop)), (USER_LEN_KEY, torch.tensor(user_len))):
        struct.set(key, value)
    config = {"topk": [k], "metric_decimal_place": 6, "tail_threshold": tail, "tail_ratio": 0.8,
              "short_history_threshold": short}
    out = {**NDCG(config).calculate_metric(struct), **Hit(config).calculate_metric(struct)}
    for name in ("ndcg_tail", "ndcg_head", "hit_tail", "hit_head", "ndcg_short", "ndcg_long", "hit_short", "hit_long"):
        out.update(GROUPED_METRICS[name](config).calculate_metric(struct))
    return {key: float(value) for key, value in out.items()}


def test_same_scores_give_the_same_numbers_through_both_evaluators():
    ranks = protocol.ranks_from_scores(SCORES)
    assert ranks.tolist() == [0, 2, 5, 1]
    pop = protocol.popularity(SEQS, 6, with_test=False)  # ours: training only; tail (< 2): items 3, 4, 5, 6
    assert pop.tolist() == [0, 2, 3, 0, 1, 1, 0]
    theirs = {**protocol.overall(ranks, k=3), **protocol.item_groups(ranks, TARGETS, pop, 2, skip_first=False, k=3)}
    lengths = [len(s) - 2 for s in SEQS]
    theirs.update(protocol.user_groups(ranks, lengths, 3, k=3))
    ours = ours_on_scores(pop.tolist(), [0] + lengths, [1, 2, 3, 4])
    for key, value in theirs.items():
        assert ours[key] == pytest.approx(value, abs=1e-6), key
    assert theirs["ndcg@3"] == pytest.approx((1 + 0.5 + 0 + 1 / np.log2(3)) / 4)


def test_official_quirks_measured_on_the_hand_example():
    ranks = protocol.ranks_from_scores(SCORES)
    train_pop = protocol.popularity(SEQS, 6, with_test=False)
    clean = protocol.item_groups(ranks, TARGETS, train_pop, 2, skip_first=False, k=3)
    # tail rows 0, 1, 2 (ranks 0, 2, 5), head row 3 (rank 1)
    assert clean["hit_tail@3"] == pytest.approx(2 / 3) and clean["hit_head@3"] == 1.0
    # 1. the first row left out of the numerators: its tail hit (rank 0) vanishes, its count stays
    skipped = protocol.item_groups(ranks, TARGETS, train_pop, 2, skip_first=True, k=3)
    assert skipped["hit_tail@3"] == pytest.approx(1 / 3) and skipped["ndcg_tail@3"] == pytest.approx(0.5 / 3)
    # 2. popularity with the test item: every target gains its own user; items 4, 5, 3 reach 2 users: all head
    full_pop = protocol.popularity(SEQS, 6, with_test=True)
    assert full_pop.tolist() == [0, 3, 3, 3, 2, 2, 2]
    leaked = protocol.item_groups(ranks, TARGETS, full_pop, 2, skip_first=False, k=3)
    assert leaked["hit_tail@3"] == 0.0 and leaked["hit_head@3"] == pytest.approx(3 / 4)
    assert protocol.group_shift(SEQS, 6, 2) == {"rows": 4, "tail_ours": 3, "tail_official": 0, "moved": 3}
    # 3. the user length: train + valid items on their side, so ts_user = ours + 1 gives the same groups
    ours_short = np.array([len(s) - 2 for s in SEQS]) < 2
    assert (np.array([len(s) - 1 for s in SEQS]) < protocol.matching_user_threshold(2)).tolist() == ours_short.tolist()


# ---- running the official code --------------------------------------------------------------------------------
def test_official_log_is_parsed_into_our_metric_names():
    log = ("# of model parameters: 1234\nThe best epoch is 7\n********** Running test **********\n"
           "Overall Performance:\n\t NDCG@10: 0.41000\n\t HR@10: 0.60000\nUser Group Performance:\n"
           "\t Short NDCG@10: 0.30000\n\t Short HR@10: 0.50000\n\t Long NDCG@10: 0.45000\n\t Long HR@10: 0.65000\n"
           "Item Group Performance:\n\t Tail NDCG@10: 0.10000\n\t Tail HR@10: 0.20000\n"
           "\t Popular NDCG@10: 0.50000\n\t Popular HR@10: 0.70000\n")
    metrics, best, params = official.parse_seqrec_log("\t NDCG@10: 0.9\n" + log)  # validation lines ignored
    assert metrics["ndcg@10"] == 0.41 and metrics["ndcg_tail@10"] == 0.1 and metrics["hit_head@10"] == 0.7
    assert metrics["ndcg_short@10"] == 0.3 and best == 7 and params == 1234 and len(metrics) == 10
    with pytest.raises(ParityError):
        official.parse_seqrec_log("Epoch 1 eval")
    assert official.as_flags({"a": 1, "flag": True, "off": False, "x-y": "z"}) == ["--a", "1", "--flag", "--x-y", "z"]


def test_scratch_copy_refuses_a_folder_inside_the_checkout(tmp_path):
    (tmp_path / "co").mkdir()
    (tmp_path / "co" / "main.py").write_text("")
    with pytest.raises(ParityError, match="inside"):
        official.scratch_copy(str(tmp_path / "co"), str(tmp_path / "co" / "scratch"), "llmesr")
    with pytest.raises(ParityError, match="no main.py"):
        official.scratch_copy(str(tmp_path), str(tmp_path / "s"), "llmesr")
    assert os.path.isfile(os.path.join(official.scratch_copy(str(tmp_path / "co"), str(tmp_path / "s"), "llmesr"), "main.py"))


def test_each_run_gets_a_fresh_private_scratch_folder(tmp_path):
    """The scratch copy was a predictable folder in the shared temp folder, reused without being cleared: whatever
    someone planted there ran. Each run now makes its own (owner only, an unguessable name)."""
    (tmp_path / "co").mkdir()
    (tmp_path / "co" / "main.py").write_text("")
    first = official.scratch_copy(str(tmp_path / "co"), str(tmp_path / "s"), "llmesr", "llmesr_tiny")
    (tmp_path / "s" / "planted").mkdir()
    second = official.scratch_copy(str(tmp_path / "co"), str(tmp_path / "s"), "llmesr", "llmesr_tiny")
    assert first != second and sorted(os.listdir(second)) == ["main.py"]
    assert os.stat(second).st_mode & 0o777 == 0o700 and os.path.basename(second).startswith("recbole_llm_parity_llmesr_tiny-")
    official.remove_scratch(second)
    assert not os.path.exists(second)


def test_the_official_child_imports_this_package_from_any_folder(tmp_path, monkeypatch):
    """The child runs the shim by its path (the folder it runs in is not on its import path), with this package's root
    first on PYTHONPATH (an uninstalled checkout too, and ahead of anything in their folder), then their source."""
    import subprocess

    seen = {}
    monkeypatch.setenv("PYTHONPATH", "/mine")
    monkeypatch.setattr(subprocess, "call", lambda cmd, cwd, stdout, stderr, env: seen.update(cmd=cmd, env=env, cwd=cwd) or 0)
    (tmp_path / "scratch").mkdir()
    assert official.run_official("learn", str(tmp_path / "scratch"), ["--a", "1"], str(tmp_path / "log" / "o.log"), str(tmp_path / "t.json")) == 0
    package_root = os.path.dirname(os.path.dirname(os.path.dirname(official.__file__)))
    path = seen["env"]["PYTHONPATH"].split(os.pathsep)
    assert path == [package_root, str(tmp_path / "scratch" / "src"), "/mine"] and seen["env"]["PYTHONSAFEPATH"] == "1"
    assert seen["cmd"][1] == os.path.join(package_root, "recbole_llm", "parity", "shim.py") and seen["cmd"][2:] == ["--a", "1"]
    assert seen["cwd"] == str(tmp_path / "scratch") and "-m" not in seen["cmd"]


def test_a_package_planted_in_the_checkout_or_scratch_is_not_imported(tmp_path):
    """A real child: a recbole_llm/ package in the official copy (the folder the child runs in) would have been
    imported first with `python -m` from there; the child imports ours, and their main.py still finds trainers/."""
    checkout = tmp_path / "co"
    (checkout / "trainers").mkdir(parents=True)
    (checkout / "trainers" / "__init__.py").write_text("")
    (checkout / "trainers" / "sequence_trainer.py").write_text("class SeqTrainer:\n    def _train_one_epoch(self):\n        pass\n")
    (checkout / "main.py").write_text(
        "import recbole_llm, trainers.sequence_trainer, sys\n"
        "open('ran.txt', 'w').write(recbole_llm.__file__ + '\\n' + ' '.join(sys.argv[1:]))\n"
    )
    marker = tmp_path / "marker"
    (checkout / "recbole_llm" / "parity").mkdir(parents=True)
    for init in ("recbole_llm/__init__.py", "recbole_llm/parity/__init__.py"):
        (checkout / init).write_text(f"open({str(marker)!r}, 'a').write('planted ran\\n')\n")
    (checkout / "recbole_llm" / "parity" / "shim.py").write_text(f"open({str(marker)!r}, 'a').write('planted ran\\n')\n")
    scratch = official.scratch_copy(str(checkout), str(tmp_path / "s"), "llmesr")
    code = official.run_official("llmesr", scratch, ["--seed", "42"], str(tmp_path / "log" / "o.log"), str(tmp_path / "t.json"))
    log = open(tmp_path / "log" / "o.log").read()
    assert code == 0, log
    assert not marker.exists()
    ours = os.path.dirname(os.path.dirname(os.path.abspath(official.__file__)))
    imported, argv = open(os.path.join(scratch, "ran.txt")).read().split("\n")
    assert os.path.dirname(os.path.realpath(imported)) == os.path.realpath(ours) and argv == "--seed 42"
    # the negative control: the former child, `python -m recbole_llm.parity.shim` run in the copy, imports the plant
    import subprocess
    import sys

    subprocess.call([sys.executable, "-m", "recbole_llm.parity.shim"], cwd=scratch, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    assert marker.read_text().startswith("planted ran")


@pytest.mark.parametrize("bad", [["--epochs=0"], ["--patience=0"], ["--max_len=0"], ["--seeds="], ["--seeds=a"], ["--sides=theirs"],
                                 ["--seeds=42,43,42"]])
def test_harness_options_out_of_range_exit_2(bad, capsys):
    from recbole_llm.parity.runner import parse_args

    with pytest.raises(SystemExit) as exit_info:
        parse_args(["--method=llmemb", "--official=x", "--dataset=d", *bad])
    assert exit_info.value.code == 2
    assert bad[0].split("=")[0] in capsys.readouterr().err


def test_shim_patches(monkeypatch):
    monkeypatch.setattr(argparse.ArgumentParser, "add_argument", argparse.ArgumentParser.add_argument)
    patch_dataset_choices()
    parser = argparse.ArgumentParser()
    parser.add_argument("--dataset", choices=["yelp", "beauty"])
    parser.add_argument("--model", choices=["a"])
    assert parser.parse_args(["--dataset", "scientific", "--model", "a"]).dataset == "scientific"
    with pytest.raises(SystemExit):
        parser.parse_args(["--model", "b"])
    module = torch.nn.Linear(2, 2)
    wrapped = PlainParallel(module, device_ids=[0])
    assert wrapped is module and wrapped.module is module and set(module.state_dict()) == {"weight", "bias"}


def test_gather_exports_what_our_llmesr_reads(tmp_path):
    from conftest import write_tiny_dataset
    from test_llmemb import llm_config, write_features

    from recbole_llm.parity.source import gather

    data_path = write_tiny_dataset(str(tmp_path / "data"))
    write_features(str(tmp_path / "features"), dim=16)
    cfg = llm_config(data_path, tmp_path, llmesr_alpha=0.1, hidden_size=8, llmesr_sim_users=3, MAX_ITEM_LIST_LENGTH=20)
    config, shared, data = gather("llmesr", "LLMESRSASRec", "tiny", cfg)
    assert shared["llm_feature"] == "rand" and len(data.sequences) == 40 and data.n_items == 30
    with open(os.path.join(data_path, "tiny", "tiny.inter")) as f:  # every interaction, each user's first included
        rows = [line.split("\t") for line in f.read().splitlines()[1:]]
    assert sum(len(s) for s in data.sequences) == len(rows)
    first = {}
    for user, item, _ in rows:
        first.setdefault(user, item)
    assert all(data.item_tokens[seq[0]] == first[data.user_tokens[u]] for u, seq in enumerate(data.sequences, start=1))
    assert data.tables["llm"].shape == (30, 16) and data.tables["pca"].shape == (30, 8)
    assert data.similar.shape == (40, 3) and data.similar.min() >= 0 and data.similar.max() < 40
    assert all(data.similar[u, 0] != u for u in range(40))
    from recbole_llm.llm.features import feature_base, load_features

    tokens, matrix, _ = load_features(feature_base(str(tmp_path / "features"), "tiny", "rand"), float32=True)
    for row in (0, 4, 29):  # export row r = the feature row of our item r + 1, found by its token
        assert np.allclose(data.tables["llm"][row], matrix[tokens.index(data.item_tokens[row + 1])])
    # the similar users are our artifact's, in 0-based rows: user u's first neighbour is our model's
    from recbole_llm.model.similar_users import similar_users_path

    artifact = torch.load(similar_users_path(config, "rand", 3), weights_only=True)
    assert (artifact["neighbors"][1:] - 1).clamp(min=0).numpy().tolist() == data.similar.tolist()


def test_bce_is_the_official_sum_of_the_positive_and_negative_means(tmp_path):
    """loss_type BCE as LLM-ESR / LLMEmb compute it: BCE(pos, 1) + BCE(neg, 0), each a mean (their weight
    against the auxiliary losses' alpha); it was one mean over both halves (half of it)."""
    import torch.nn.functional as F
    from conftest import tiny_config, write_tiny_dataset
    from test_llmemb import build

    data_path = write_tiny_dataset(str(tmp_path / "data"))
    _, _, _, model = build("SASRec", tiny_config(data_path, tmp_path, loss_type="BCE", train_mode="all_positions"))
    torch.manual_seed(0)
    states, pos, neg = torch.randn(5, 16), torch.tensor([1, 2, 3, 4, 5]), torch.tensor([6, 7, 8, 9, 10])
    table = model.item_table()
    out = model.output_table(table)
    expected = (F.binary_cross_entropy_with_logits((states * out[pos]).sum(-1), torch.ones(5))
                + F.binary_cross_entropy_with_logits((states * out[neg]).sum(-1), torch.zeros(5)))
    assert model.score_loss(states, pos, table, neg).item() == pytest.approx(expected.item(), rel=1e-6)


def test_a_stopped_official_rerun_leaves_the_finished_log(tmp_path, monkeypatch):
    """The child writes under .running names, moved when it ends: a rerun stopped midway (the parent's SIGTERM,
    here KeyboardInterrupt) used to leave the finished run's log truncated to the new run's first line."""
    from recbole_llm.parity import runner

    args = runner.parse_args(["--method=learn", "--official=x", "--dataset=d", f"--out={tmp_path}", "--seeds=1", "--epochs=1"])
    spec = runner.load_methods()["learn"]

    def finished(method, scratch, flags, log_path, times_path):
        os.makedirs(os.path.dirname(log_path), exist_ok=True)
        open(log_path, "w").write("the finished run\n")
        json.dump({"epoch_seconds": [3.0], "evals": [{"NDCG@10": 0.5, "Recall@10": 0.75}]}, open(times_path, "w"))
        return 0

    monkeypatch.setattr(official, "run_official", finished)
    runner.run_official_seed(args, spec, str(tmp_path / "s"), "D", 1, None, "full")
    logs = tmp_path / "logs"
    assert sorted(os.listdir(logs)) == ["official_1.log", "official_1.times.json"]
    record = json.load(open(tmp_path / "runs" / "d" / "official" / "1.json"))
    assert record["status"] == "ok" and record["modes"]["full"]["ndcg@10"] == 0.5

    def stopped(method, scratch, flags, log_path, times_path):
        open(log_path, "w").write("a new run\n")
        raise KeyboardInterrupt

    monkeypatch.setattr(official, "run_official", stopped)
    os.remove(tmp_path / "runs" / "d" / "official" / "1.json")  # forces the rerun
    with pytest.raises(KeyboardInterrupt):
        runner.run_official_seed(args, spec, str(tmp_path / "s"), "D", 1, None, "full")
    assert open(logs / "official_1.log").read() == "the finished run\n"
    assert json.load(open(logs / "official_1.times.json"))["epoch_seconds"] == [3.0]


# ---- the spec of both sides, exit codes, checks before any work --------------------------------------------------
def learn_argv(tiny, tmp_path, *extra):
    """Our LEARN side on the tiny dataset, small towers (records under tmp_path/parity)."""
    return ["--method=learn", "--dataset=tiny", f"--data_path={tiny}", "--seeds=1", "--epochs=1", f"--out={tmp_path / 'parity'}",
            f"--feature_dir={tmp_path / 'features'}", "--llm_feature=rand", "--d_model=16", "--n_layers=1", "--n_heads=1",
            "--inner_size=32", "--embedding_dim=16", *extra]


def write_rand_features(tmp_path, seed=0):
    from test_llmemb import write_features

    write_features(str(tmp_path / "features"), dim=12, seed=seed)


def test_the_official_spec_holds_the_inputs_and_not_the_scratch_folder(tmp_path, monkeypatch):
    """Changed keys, data or exported tables rerun the official side; another scratch folder does not."""
    from recbole_llm.parity import runner

    args = runner.parse_args(["--method=learn", "--official=x", "--dataset=d", f"--out={tmp_path}", "--seeds=1", "--epochs=1"])
    spec, calls = runner.load_methods()["learn"], []

    def finished(method, scratch, flags, log_path, times_path):
        calls.append(scratch)
        os.makedirs(os.path.dirname(log_path), exist_ok=True)
        open(log_path, "w").write("ok\n")
        json.dump({"epoch_seconds": [1.0], "evals": [{"NDCG@10": 0.5, "Recall@10": 0.75}]}, open(times_path, "w"))
        return 0

    monkeypatch.setattr(official, "run_official", finished)
    inputs = {"keys": {"feature_dir": "f"}, "data_path": None, "dataset_files": {"d.inter": [10, "abc"]}, "exported": "1234"}
    runner.run_official_seed(args, spec, "/tmp/scratch-a", "D", 1, None, "full", inputs)
    runner.run_official_seed(args, spec, "/tmp/scratch-b", "D", 1, None, "full", inputs)
    assert calls == ["/tmp/scratch-a"]  # the same inputs in another scratch folder: done before
    for changed in ({**inputs, "exported": "5678"}, {**inputs, "keys": {"feature_dir": "g"}},
                    {**inputs, "dataset_files": {"d.inter": [10, "abd"]}}, {**inputs, "data_path": "/elsewhere"}):
        runner.run_official_seed(args, spec, "/tmp/scratch-c", "D", 1, None, "full", changed)
    assert len(calls) == 5


def test_the_checkout_is_checked_before_anything_is_built(tiny_data, tmp_path, monkeypatch, capsys):
    from recbole_llm.parity import runner, source

    monkeypatch.setattr(source, "gather", lambda *a, **k: pytest.fail("features and teacher built before --official was checked"))
    with pytest.raises(SystemExit) as exit_info:
        runner.main(learn_argv(tiny_data, tmp_path, f"--official={tmp_path / 'nothing'}"))
    err = capsys.readouterr().err
    assert exit_info.value.code == 2 and "has no src/training/main_amazon.py" in err and err.count("\n") == 1


def test_a_failed_side_exits_1_and_the_scratch_copy_is_removed(tiny_data, tmp_path, monkeypatch, capsys):
    from recbole_llm.parity import runner

    write_rand_features(tmp_path)
    checkout = tmp_path / "LEARN"
    (checkout / "src" / "training").mkdir(parents=True)
    (checkout / "src" / "training" / "main_amazon.py").write_text("")
    scratches = []
    monkeypatch.setattr(runner, "export", lambda args, spec, shared, data, scratch: scratches.append(scratch) or "Tiny")

    def fails(method, scratch, flags, log, times):
        os.makedirs(os.path.dirname(log), exist_ok=True)
        open(log, "w").write("boom\n")
        return 1

    monkeypatch.setattr(official, "run_official", fails)
    with pytest.raises(SystemExit) as exit_info:
        runner.main(learn_argv(tiny_data, tmp_path, f"--official={checkout}", f"--scratch={tmp_path / 's'}"))
    err = capsys.readouterr().err
    assert exit_info.value.code == 1 and "1 parity run(s) failed: official seed 1 (exit code 1" in err and err.count("\n") == 1
    assert len(scratches) == 1 and not os.path.exists(scratches[0]) and os.listdir(tmp_path / "s") == []
    record = json.load(open(tmp_path / "parity" / "runs" / "tiny" / "ours" / "1.json"))
    assert record["status"] == "ok"  # our side ran: only the failed one is named


def test_our_side_reruns_when_an_exported_table_changes(tiny_data, tmp_path, capsys):
    from recbole_llm.parity import runner

    write_rand_features(tmp_path)
    argv = learn_argv(tiny_data, tmp_path, "--official=unused", "--sides=ours")
    record_path = tmp_path / "parity" / "runs" / "tiny" / "ours" / "1.json"
    assert runner.main(argv) == 0
    first = json.load(open(record_path))
    assert runner.main(argv) == 0
    assert "ours seed 1: done before, skipping" in capsys.readouterr().out
    assert json.load(open(record_path))["run_id"] == first["run_id"] and json.load(open(record_path))["wall_seconds"] == first["wall_seconds"]
    write_rand_features(tmp_path, seed=1)  # the same name, other vectors: the keys are unchanged, the table is not
    assert runner.main(argv) == 0
    again = json.load(open(record_path))
    assert "done before" not in capsys.readouterr().out
    assert again["parity_inputs"] != first["parity_inputs"] and again["status"] == "ok"
