"""The benchmark command: files, resume, a failing model recorded while the others go on."""

import csv
import json

from recbole_llm import benchmark


def test_benchmark_files_resume_and_failure(tiny_data, tmp_path, capsys):
    out = tmp_path / "bench"
    args = [
        "--dataset=tiny",
        f"--data_path={tiny_data}",
        "--models=SASRec,GRU4Rec,NoSuchModel",
        "--seeds=1,2",
        "--epochs=1",
        f"--out={out}",
        "--load_col={'inter':['user_id','item_id','timestamp']}",
        "--MAX_ITEM_LIST_LENGTH=10",
        "--hidden_size=16",
        "--embedding_size=16",
    ]
    assert benchmark.main(args) == 0
    rows = {r["model"]: r for r in csv.DictReader(open(out / "results.csv"))}
    assert rows["SASRec"]["seeds"] == "2" and float(rows["SASRec"]["ndcg@10_mean"]) > 0
    assert rows["GRU4Rec"]["seeds"] == "2" and rows["GRU4Rec"]["ndcg_tail@10_mean"] != ""
    assert rows["NoSuchModel"]["failed"] == "2" and "Unknown model 'NoSuchModel'" in rows["NoSuchModel"]["error"]
    table = (out / "results.md").read_text()
    assert "| SASRec | 2 |" in table and "±" in table
    assert (out / "ndcg_head_tail.png").stat().st_size > 1000
    assert (out / "ndcg_by_popularity.png").stat().st_size > 1000
    run = json.load(open(out / "runs" / "SASRec-1.json"))
    assert run["status"] == "ok" and sum(b["rows"] for b in run["popularity_buckets"].values()) == 40

    # resume: nothing is trained again
    capsys.readouterr()
    calls = []
    original = benchmark.run_one
    benchmark.run_one = lambda *a, **k: calls.append(a) or original(*a, **k)
    try:
        assert benchmark.main(args) == 0
    finally:
        benchmark.run_one = original
    assert calls == []
    assert "SASRec seed 1: done before (ok), skipping" in capsys.readouterr().out
