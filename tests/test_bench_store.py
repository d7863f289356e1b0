"""The suite's record store (recbole_llm/bench/): records know their inputs, stale ones rerun and are left out of the
tables, a corrupt one reruns alone, one driver per store; the suite file's own checks."""

import json
import os
import subprocess
import sys
import textwrap

import pytest
import yaml

from recbole_llm import benchmark
from recbole_llm.errors import ConfigError

METRICS = {"ndcg@10": 0.1, "ndcg_head@10": 0.1, "ndcg_tail@10": 0.1, "hit@10": 0.2}
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture
def store(tmp_path, monkeypatch):
    """A suite over a one-file dataset with a config file, run by the real execute_run with training replaced:
    returns (suite file, out folder, dataset .inter file, config file, list of (row, seed) trained)."""
    import recbole_llm.quick_start as quick_start
    from recbole_llm.bench import execute

    data = tmp_path / "data" / "d"
    data.mkdir(parents=True)
    (data / "d.inter").write_text("user_id:token\titem_id:token\n1\t1\n")
    config_file = tmp_path / "keys.yaml"
    config_file.write_text("hidden_size: 8\n")
    out = tmp_path / "out"
    suite = tmp_path / "s.yaml"
    suite.write_text(yaml.safe_dump({"datasets": ["d"], "data_path": str(tmp_path / "data"), "seeds": [1, 2],
                                     "config_files": [str(config_file)], "popularity_buckets": False, "out": str(out),
                                     "rows": {"A": {"model": "SASRec"}, "B [x=1]": {"model": "SASRec", "x": 1}},
                                     "pairs": [["A", "B [x=1]"]]}))
    trained = []

    def fake_train(model=None, dataset=None, config_file_list=None, config_dict=None):
        trained.append((config_dict["checkpoint_dir"].rsplit(os.sep, 1)[1], config_dict["seed"]))
        return {"test_result": dict(METRICS, **{"ndcg@10": 0.1 + 0.01 * config_dict["seed"]}), "train_seconds": 1.0,
                "epochs_run": 1, "num_params": 10, "model_file": "none", "eval_seconds": 0.1}

    monkeypatch.setattr(quick_start, "run_recbole_llm", fake_train)
    monkeypatch.setattr(execute, "prepare_runs", lambda s, pending: [(*run, {"llm_feature": "f-0123"}) for run in pending])
    return suite, out, data / "d.inter", config_file, trained


def record_of(out, row, seed):
    return json.loads((out / "runs" / "d" / row / f"{seed}.json").read_text())


def test_a_record_holds_its_inputs_and_reruns_when_a_config_file_changes(store, capsys):
    suite, out, inter, config_file, trained = store
    assert benchmark.main([f"--suite={suite}"]) == 0 and len(trained) == 4
    rec = record_of(out, "A", 1)
    assert rec["inputs"]["config_files"][str(config_file)][0] == config_file.stat().st_size
    assert set(rec["inputs"]["dataset_files"]) == {"d.inter"} and rec["inputs"]["artifacts"] == {"llm_feature": "f-0123"}
    assert rec["package_version"] and "git_commit" in rec
    trained.clear()
    assert benchmark.main([f"--suite={suite}"]) == 0 and trained == []  # nothing changed: nothing reruns
    config_file.write_text("hidden_size: 16\n")  # same path, other content
    capsys.readouterr()
    assert benchmark.main([f"--suite={suite}"]) == 0
    assert len(trained) == 4 and "its inputs changed since it ran (keys.yaml): running it again" in capsys.readouterr().out


def test_a_changed_dataset_file_reruns_and_stale_records_are_left_out_of_the_tables(store, capsys):
    from recbole_llm.suite import load_records, load_suite

    suite, out, inter, _, trained = store
    assert benchmark.main([f"--suite={suite}"]) == 0
    inter.write_text("user_id:token\titem_id:token\n1\t2\n")  # the same size, other content
    records = load_records(load_suite(str(suite)))
    assert len(records) == 4 and all("d.inter" in r["stale"] for r in records)
    from recbole_llm.bench.report import build_tables

    table = build_tables(records, [], ["full"], ["ndcg@10"], "h")
    assert "| d | A |" not in table and "Left out: 4 record(s)" in table and "- d A seed 1: its inputs changed" in table
    # the negative control: the same records with their inputs as they are now count
    assert "| d | A | full | 2 |" in build_tables([dict(r, stale=None) for r in records], [], ["full"], ["ndcg@10"], "h")
    trained.clear()
    assert benchmark.main([f"--suite={suite}"]) == 0 and len(trained) == 4


def test_the_results_page_names_a_stale_record_and_refuses_a_corrupt_one(store, tmp_path):
    from recbole_llm.results import main as results_main

    suite, out, inter, _, _ = store
    assert benchmark.main([f"--suite={suite}"]) == 0
    sources = tmp_path / "sources.yaml"
    sources.write_text(yaml.safe_dump({"sources": [{"id": "s", "title": "t", "suite": str(suite), "baseline": "A"}]}))
    page = tmp_path / "page.md"
    args = [f"--sources={sources}", f"--out={page}", f"--root={tmp_path}", "--no_plots"]
    assert results_main(args) == 0 and "| A | full | 2 |" in page.read_text()
    data = record_of(out, "A", 2)
    data["inputs"]["dataset_files"]["d.inter"] = [1, "0000"]  # as if it ran on other data
    (out / "runs" / "d" / "A" / "2.json").write_text(json.dumps(data))
    assert results_main(args) == 0
    text = page.read_text()
    assert "| A | full | 1 |" in text and "Left out of this table: 1 record(s)" in text and "A seed 2 (its inputs changed" in text
    (out / "runs" / "d" / "A" / "1.json").write_text('{"dataset": "d", "row": "A", "seed"')  # truncated
    assert results_main(args) == 2


def test_a_corrupt_record_is_named_and_only_its_run_reruns(store, capsys):
    suite, out, _, _, trained = store
    assert benchmark.main([f"--suite={suite}"]) == 0
    trained.clear()
    (out / "runs" / "d" / "A" / "2.json").write_text("[1, 2]")
    (out / "runs" / "d" / "B [x=1]" / "1.json").write_text('{"dataset": "d", "row": "B [x=1]", "seed": 1, "status": "ok"}')
    capsys.readouterr()
    assert benchmark.main([f"--suite={suite}"]) == 0
    text = capsys.readouterr().out
    assert sorted(trained) == [("A", 2), ("B [x=1]", 1)]
    assert "runs/d/A/2.json is corrupt (a JSON list, not a record): its run runs again" in text
    assert "1.json is corrupt (a finished record without its 'modes')" in text


def test_a_pair_whose_row_name_holds_a_bracket_has_its_rows(store):
    suite, out, _, _, _ = store
    assert benchmark.main([f"--suite={suite}"]) == 0
    table = (out / "results.md").read_text()
    assert "| d | A -> B [x=1] | full | +0.0% [+0.0, +0.0] |" in table  # the same fake metrics on both rows


LOCKED = textwrap.dedent('''
    import sys, time
    from recbole_llm.bench.store import store_lock
    with store_lock({"out": sys.argv[1]}):
        print("locked", flush=True)
        time.sleep(60)
''')


def test_one_driver_per_suite_folder(store):
    suite, out, _, _, trained = store
    holder = subprocess.Popen([sys.executable, "-c", LOCKED, str(out)], stdout=subprocess.PIPE, text=True,
                              env=dict(os.environ, PYTHONPATH=ROOT))
    try:
        assert holder.stdout.readline().strip() == "locked"
        from recbole_llm.suite import load_suite, run_suite

        with pytest.raises(ConfigError, match=r"is in use by another driver \(pid \d+"):
            run_suite(load_suite(str(suite)))
        assert trained == []
    finally:
        holder.kill()
        holder.wait()
    assert benchmark.main([f"--suite={suite}"]) == 0 and len(trained) == 4  # free again once the holder is gone


@pytest.mark.parametrize("change, message", [
    ({"seeds": [2020, 2020]}, "key 'seeds' names 2020 twice"),
    ({"datasets": ["d", "d"]}, "key 'datasets' names 'd' twice"),
])
def test_a_repeated_seed_or_dataset_is_refused(tmp_path, change, message):
    from recbole_llm.suite import make_suite

    with pytest.raises(ConfigError, match=message):
        make_suite({"datasets": ["d"], "models": ["SASRec"], "out": str(tmp_path / "o"), **change}, "s.yaml")


def test_a_suite_out_that_is_a_file_is_refused_before_anything_runs(tmp_path):
    from recbole_llm.suite import make_suite

    (tmp_path / "o").write_text("x")
    with pytest.raises(ConfigError, match="out '.*o' is a file, not a folder"):
        make_suite({"datasets": ["d"], "models": ["SASRec"], "out": str(tmp_path / "o")}, "s.yaml")


@pytest.mark.parametrize("content", ["[1, 2]", '{"d": [1]}', '{"d": {"SASRec": [{"seed": 1, "full": {}}]}}'])
def test_from_json_that_is_not_a_raw_result_is_one_line(tmp_path, content):
    from recbole_llm.bench.store import legacy_records

    path = tmp_path / "raw.json"
    path.write_text(content)
    with pytest.raises(ConfigError, match=f"--from_json: '{path}'"):
        legacy_records([str(path)])


def test_a_failed_popularity_pass_is_named_under_the_table():
    from recbole_llm.bench.execute import add_popularity_buckets
    from recbole_llm.bench.report import build_tables

    rec = {"dataset": "d", "row": "A", "model": "SASRec", "seed": 1, "status": "ok", "model_file": "/no/such.pth",
           "modes": {"full": METRICS}, "sec_per_epoch": 1.0, "epochs": 1, "params": 1}
    add_popularity_buckets(rec, ["full"])
    assert "popularity_buckets" not in rec and rec["popularity_buckets_error"]
    assert "Popularity buckets could not be computed for: d A seed 1" in build_tables([rec], [], ["full"], ["ndcg@10"], "h")
