"""The benchmark command: files, resume, a failing model recorded while the others go on."""

import csv
import json
import os
import sys

import pytest
from conftest import ROOT

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
    assert benchmark.main(args) == 1  # a failed run: the table is written, the exit code says so
    assert "error: 2 of 6 runs failed (NoSuchModel seed 1: UnknownNameError" in capsys.readouterr().err
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
        assert benchmark.main(args) == 1  # the failed runs are still failed
    finally:
        benchmark.run_one = original
    assert calls == []
    assert "SASRec seed 1: done before (ok), skipping" in capsys.readouterr().out


# ---- parallel workers, shared artifacts, confidence intervals --------------------------------------------
TINY = [
    "--load_col={'inter':['user_id','item_id','timestamp']}",
    "--MAX_ITEM_LIST_LENGTH=10",
    "--hidden_size=16",
    "--embedding_size=16",
]


def tiny_args(tiny_data, out, models, seeds="1", *extra):
    return ["--dataset=tiny", f"--data_path={tiny_data}", f"--models={models}", f"--seeds={seeds}", "--epochs=1", f"--out={out}", *TINY, *extra]


def llmemb_args(features):
    """Small, fast LLMEmb runs on the tiny data: MiniLM features in ``features``, a one-epoch teacher."""
    return [
        f"--feature_dir={features}", "--llm_path=minilm", "--align_alpha=0.5", "--teacher_epochs=1", "--train_batch_size=64",
        "--n_layers=1", "--n_heads=1", "--inner_size=32",
        "--text_fields=['title','brand','categories']", "--prompt_instruction=The item has the following attributes:",
    ]


def result_files(out):
    """Relative paths of what the benchmark writes for the table (checkpoints and worker logs aside)."""
    return sorted(str(p.relative_to(out)) for p in out.rglob("*") if p.is_file() and p.relative_to(out).parts[0] not in ("checkpoints", "logs"))


def test_mean_ci_hand_example():
    mean, half = benchmark.mean_ci([1, 2, 3])
    # s = 1, t(0.975, 2) = 4.302653: half-width 4.302653 / sqrt(3)
    assert mean == 2 and half == pytest.approx(2.484, abs=5e-4)
    assert benchmark.mean_ci([0.5]) == (0.5, None)
    assert benchmark.mean_ci([]) == (None, None)
    assert benchmark.mean_ci([0.2, 0.2, 0.2]) == (pytest.approx(0.2), 0.0)
    known = {1: 12.7062, 2: 4.3027, 10: 2.2281, 30: 2.0423, 31: 2.0395, 60: 2.0003, 120: 1.9799, 10**6: 1.9600}
    for df, value in known.items():
        assert benchmark.t_quantile_975(df) == pytest.approx(value, abs=1e-4)
    with pytest.raises(ValueError):
        benchmark.t_quantile_975(0)


def test_two_workers_same_files_as_one_and_resume(tiny_data, tmp_path, monkeypatch, capsys):
    import torch

    monkeypatch.setattr(benchmark, "available_cores", lambda: 2)  # 2 workers x 1 thread, like the serial run below
    serial, parallel = tmp_path / "serial", tmp_path / "parallel"
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        assert benchmark.main(tiny_args(tiny_data, serial, "SASRec,GRU4Rec")) == 0
    finally:
        torch.set_num_threads(threads)
    args = tiny_args(tiny_data, parallel, "SASRec,GRU4Rec", "1", "--workers=2")
    assert benchmark.main(args) == 0
    out = capsys.readouterr().out
    assert "2 runs in 2 worker processes, 1 thread(s) each" in out and "SASRec seed 1: started" in out

    assert result_files(serial) == result_files(parallel)
    assert result_files(parallel) == sorted(
        ["results.csv", "results.md", "ndcg_head_tail.png", "ndcg_by_popularity.png", "runs/SASRec-1.json", "runs/GRU4Rec-1.json"]
    )
    for model in ("SASRec", "GRU4Rec"):
        one = json.load(open(serial / "runs" / f"{model}-1.json"))
        two = json.load(open(parallel / "runs" / f"{model}-1.json"))
        assert two["status"] == "ok" and two["torch_threads"] == 1
        assert two["test"] == one["test"] and two["num_params"] == one["num_params"]
        assert two["popularity_buckets"] == one["popularity_buckets"]
        # the extra --key=value pairs reached the worker; only the checkpoint folder differs
        assert {k: v for k, v in two["config"].items() if k != "checkpoint_dir"} == {k: v for k, v in one["config"].items() if k != "checkpoint_dir"}
        assert two["config"]["hidden_size"] == 16 and two["model_file"].startswith(str(parallel / "checkpoints" / f"{model}-1"))
        assert (parallel / "logs" / f"{model}-1.log").is_file() and not (parallel / "logs" / f"{model}-1.job.json").exists()
    timing = ("train_seconds_per_epoch", "eval_seconds")
    rows_one = [{k: v for k, v in r.items() if k not in timing} for r in csv.DictReader(open(serial / "results.csv"))]
    rows_two = [{k: v for k, v in r.items() if k not in timing} for r in csv.DictReader(open(parallel / "results.csv"))]
    assert rows_one == rows_two

    # resume with workers: nothing finished is run again, no worker is started
    started = []
    original = benchmark.start_worker
    monkeypatch.setattr(benchmark, "start_worker", lambda *a: started.append(a[0]) or original(*a))
    assert benchmark.main(args) == 0
    assert started == [] and "GRU4Rec seed 1: done before (ok), skipping" in capsys.readouterr().out
    # a run whose JSON is gone runs again, alone
    (parallel / "runs" / "GRU4Rec-1.json").unlink()
    assert benchmark.main(args) == 0
    assert [os.path.basename(f) for f in started] == ["GRU4Rec-1.job.json"]
    assert json.load(open(parallel / "runs" / "GRU4Rec-1.json"))["status"] == "ok"
    assert list(csv.DictReader(open(parallel / "results.csv")))[1]["seeds"] == "1"


def test_failing_worker_is_recorded_and_others_go_on(tiny_data, tmp_path, monkeypatch):
    """GRU4Rec raises inside its worker process, BPR's worker dies without a result; SASRec still finishes."""
    out = tmp_path / "bench"
    raising = (
        "import sys\n"
        "from recbole_llm import benchmark\n"
        "def boom(*args, **kwargs):\n"
        "    raise RuntimeError('boom inside the worker')\n"
        "benchmark.run_job = boom\n"
        "sys.exit(benchmark.worker_main(sys.argv[1]))\n"
    )
    original = benchmark.worker_command

    def command(job_file):
        if os.path.basename(job_file).startswith("GRU4Rec"):
            return [sys.executable, "-c", raising, job_file]
        if os.path.basename(job_file).startswith("BPR"):
            return [sys.executable, "-c", "import os; print('dying'); os._exit(3)"]
        return original(job_file)

    monkeypatch.setattr(benchmark, "worker_command", command)
    assert benchmark.main(tiny_args(tiny_data, out, "GRU4Rec,BPR,SASRec,NoSuchModel", "1", "--workers=2")) == 1
    gru = json.load(open(out / "runs" / "GRU4Rec-1.json"))
    assert gru["status"] == "failed" and gru["error"] == "RuntimeError: boom inside the worker" and "boom" in gru["traceback"]
    bpr = json.load(open(out / "runs" / "BPR-1.json"))
    assert bpr["status"] == "failed" and "worker exited with code 3 without a result" in bpr["error"] and "dying" in bpr["traceback"]
    assert json.load(open(out / "runs" / "SASRec-1.json"))["status"] == "ok"
    no_such = json.load(open(out / "runs" / "NoSuchModel-1.json"))
    assert no_such["stage"] == "prepare_artifacts" and "Unknown model 'NoSuchModel'" in no_such["error"]
    rows = {r["model"]: r for r in csv.DictReader(open(out / "results.csv"))}
    assert rows["GRU4Rec"]["failed"] == "1" and rows["GRU4Rec"]["error"] == "RuntimeError: boom inside the worker"
    assert rows["BPR"]["failed"] == "1" and rows["SASRec"]["seeds"] == "1"
    assert "| GRU4Rec | 0 |" in (out / "results.md").read_text()


def test_shared_teacher_built_once_before_the_workers(tiny_data, tmp_path, capsys):
    """LLMEmbSASRec and LLMEmbGRU4Rec with the same width: one feature file and one teacher, built in the driver."""
    out, features = tmp_path / "bench", tmp_path / "features"
    args = tiny_args(tiny_data, out, "LLMEmbSASRec,LLMEmbGRU4Rec", "1,2", "--workers=2", *llmemb_args(features))
    assert benchmark.main(args) == 0
    out_text = capsys.readouterr().out
    teachers = sorted(features.glob("tiny.teacher-*.pth"))
    assert len(teachers) == 1
    # prepared per model and seed: the cached teacher is found again for the other three
    assert out_text.count("teacher: training SASRec") == 1 and out_text.count("teacher: reusing cached") == 3
    configs = []
    for model in ("LLMEmbSASRec", "LLMEmbGRU4Rec"):
        for seed in (1, 2):
            run = json.load(open(out / "runs" / f"{model}-{seed}.json"))
            assert run["status"] == "ok", run.get("error")
            configs.append(run["config"])
            log = (out / "logs" / f"{model}-{seed}.log").read_text()
            assert "teacher: training" not in log and "wrote" not in log  # nothing built in the workers
    assert {c["teacher_checkpoint"] for c in configs} == {str(teachers[0])}
    assert len({c["llm_feature"] for c in configs}) == 1 and all(c["feature_dir"] == str(features) for c in configs)


def test_llmemb_vs_sasrec_tables_with_intervals():
    import importlib.util

    spec = importlib.util.spec_from_file_location("llmemb_vs_sasrec", os.path.join(ROOT, "benchmarks", "llmemb_vs_sasrec.py"))
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)

    def row(seed, ndcg):
        metrics = {m: ndcg for m in script.METRICS}
        return {"seed": seed, "full": metrics, "uni100": metrics, "sec_per_epoch": 1.0, "epochs": 5, "params": 10}

    paired = {"d": {"SASRec": [row(s, 0.1) for s in (1, 2, 3)], "LLMEmbSASRec": [row(s, v) for s, v in zip((1, 2, 3), (0.11, 0.12, 0.13))]}}
    table = script.build_tables(paired, ["SASRec:LLMEmbSASRec"], "header")
    # per-seed changes +10%, +20%, +30%: mean +20%, half-width 4.3027 * 10 / sqrt(3) = 24.8 points
    assert "| d | SASRec -> LLMEmbSASRec | full | +20.0% [-4.8, +44.8] |" in table and "paired, 3 seeds" in table
    assert "| d | LLMEmbSASRec | full | 3 | 0.1200 ± 0.0248 |" in table
    # no common seeds: ratio of means with a delta-method interval
    unpaired = {"d": {"SASRec": [row(1, 0.1), row(2, 0.1)], "LLMEmbSASRec": [row(3, 0.11), row(4, 0.13)]}}
    change, half, how = script.relative_change(unpaired["d"]["SASRec"], unpaired["d"]["LLMEmbSASRec"], lambda r: r["full"]["ndcg@10"])
    assert how == "ratio of means" and change == pytest.approx(0.2) and half == pytest.approx(12.7062 * 0.01 / 0.1, rel=1e-4)
    one = script.build_tables({"d": {"SASRec": [row(1, 0.1)], "LLMEmbSASRec": [row(1, 0.15)]}}, ["SASRec:LLMEmbSASRec"], "h")
    assert "| +50.0% | +50.0% | +50.0% | 1.00x | one run |" in one and "| d | SASRec | full | 1 | 0.1000 |" in one


def test_llmemb_vs_sasrec_resumes_from_its_json_and_sets_pair_modes(tmp_path, monkeypatch, capsys):
    import importlib.util

    spec = importlib.util.spec_from_file_location("llmemb_vs_sasrec_resume", os.path.join(ROOT, "benchmarks", "llmemb_vs_sasrec.py"))
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    calls = []

    def fake_run(model, dataset, seed, args, workdir):
        calls.append((model, seed))
        metrics = {m: 0.1 for m in script.METRICS}
        return {"full": metrics, "uni100": metrics, "sec_per_epoch": 1.0, "epochs": 1, "params": 1}

    monkeypatch.setattr(script, "run_one", fake_run)
    path = tmp_path / "r.json"
    argv = ["x", "--datasets=d", "--pairs=SASRec:LLMEmbSASRec", "--seeds=1,2", f"--json={path}"]
    monkeypatch.setattr(sys, "argv", list(argv))
    script.main()
    assert len(calls) == 4
    data = json.loads(path.read_text())
    data["d"]["SASRec"] = [r for r in data["d"]["SASRec"] if r["seed"] == 1]  # lose one finished run
    data["d"]["LLMEmbSASRec"][0] = {"seed": 1, "error": "boom"}  # and fail another
    path.write_text(json.dumps(data))
    calls.clear()
    monkeypatch.setattr(sys, "argv", list(argv))
    script.main()
    assert sorted(calls) == [("LLMEmbSASRec", 1), ("SASRec", 2)]  # only the missing and the failed runs
    monkeypatch.setattr(sys, "argv", ["x", "--pairs=SASRec:LLMEmbSASRec", f"--table_only={path},{path}"])
    capsys.readouterr()
    script.main()
    assert "| d | SASRec | full | 2 |" in capsys.readouterr().out  # a run found in two files counts once
    ablation = json.loads(path.read_text())
    ablation["d"]["LLMEmbSASRec"] = [dict(r, llm_keys="adapter_layers=1", epochs=7) for r in ablation["d"]["LLMEmbSASRec"]]
    (tmp_path / "ablation.json").write_text(json.dumps(ablation))
    monkeypatch.setattr(sys, "argv", ["x", "--pairs=SASRec:LLMEmbSASRec", f"--table_only={path},{tmp_path / 'ablation.json'}"])
    script.main()
    out = capsys.readouterr().out
    assert "| d | SASRec | full | 2 |" in out and "| d | LLMEmbSASRec | full | 2 |" in out
    assert "| d | LLMEmbSASRec [adapter_layers=1] | full | 2 |" in out  # an ablation is its own row and pair
    assert "| d | SASRec -> LLMEmbSASRec [adapter_layers=1] | full |" in out and "| d | SASRec -> LLMEmbSASRec | full |" in out
    ablation["d"]["SASRec"][0]["epochs"] = 99  # the same baseline run, other numbers: which one is right?
    (tmp_path / "conflict.json").write_text(json.dumps(ablation))
    monkeypatch.setattr(sys, "argv", ["x", "--pairs=SASRec:LLMEmbSASRec", f"--table_only={path},{tmp_path / 'conflict.json'}"])
    with pytest.raises(SystemExit, match="conflict.json and .*r.json hold different results for d SASRec seed 1"):
        script.main()
    calls.clear()
    monkeypatch.setattr(sys, "argv", argv + ["--llm_keys=adapter_layers=1"])
    script.main()
    assert sorted(calls) == [("LLMEmbSASRec", 1), ("LLMEmbSASRec", 2)]  # an ablation resumes next to the default runs
    data = json.loads(path.read_text())
    assert [r.get("llm_keys") for r in data["d"]["LLMEmbSASRec"]] == [None, None, "adapter_layers=1", "adapter_layers=1"]
    calls.clear()
    monkeypatch.setattr(sys, "argv", ["x", "--datasets=d", "--pairs=SASRec:LLMEmbSASRec", "--seeds=3", "--only=LLMEmbSASRec"])
    script.main()
    assert calls == [("LLMEmbSASRec", 3)]  # --only: the baseline side is left to another process
    monkeypatch.setattr(sys, "argv", ["x", "--pairs=SASRec:LLMEmbSASRec", "--only=LLMEmbSASrec"])
    with pytest.raises(SystemExit):
        script.main()
    assert "no pair of --pairs" in capsys.readouterr().err


def test_llmemb_vs_sasrec_pair_modes_reach_both_sides(monkeypatch):
    import importlib.util
    import types

    spec = importlib.util.spec_from_file_location("llmemb_vs_sasrec_modes", os.path.join(ROOT, "benchmarks", "llmemb_vs_sasrec.py"))
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    seen = {}

    def fake_run_recbole_llm(model, dataset, config_dict):
        seen[model] = (config_dict["train_mode"], config_dict["train_batch_size"])
        seen[model + " bias"] = config_dict.get("output_bias")
        raise RuntimeError("stop here")

    import recbole_llm.quick_start as quick_start

    monkeypatch.setattr(quick_start, "run_recbole_llm", fake_run_recbole_llm)
    args = types.SimpleNamespace(
        data_path=".", epochs=1, stopping_step=1, hidden_size=8, max_len=5, scft=False, scft_steps=1, alpha=0.0,
        sasrec_mode="all_positions:128", gru4rec_mode="prefix:2048", bert4rec_mode="all_positions:64",
        llm_keys="output_bias=False",
    )
    for model in ("GRU4Rec", "LLMEmbGRU4Rec", "BERT4Rec", "LLMEmbBERT4Rec", "LLMEmbSASRec"):
        with pytest.raises(RuntimeError, match="stop here"):
            script.run_one(model, "d", 1, args, ".")
    assert seen["GRU4Rec"] == seen["LLMEmbGRU4Rec"] == ("prefix", 2048)
    assert seen["BERT4Rec"] == seen["LLMEmbBERT4Rec"] == ("all_positions", 64)
    assert seen["LLMEmbSASRec"] == ("all_positions", 128)
    assert seen["LLMEmbBERT4Rec bias"] is False and seen["BERT4Rec bias"] is None  # --llm_keys: the LLMEmb side only
    assert script.parse_keys("adapter_layers=1, align_tau=0.5,adapter_activation=gelu") == {
        "adapter_layers": 1, "align_tau": 0.5, "adapter_activation": "gelu"}
    with pytest.raises(ValueError, match="KEY=VALUE"):
        script.parse_keys("output_bias")


def test_benchmark_with_cold_items_reports_warm_and_cold(tiny_data, tmp_path):
    out = tmp_path / "bench"
    assert benchmark.main(tiny_args(tiny_data, out, "SASRec", "1,2", "--cold_item_ratio=0.2")) == 0
    rows = {r["model"]: r for r in csv.DictReader(open(out / "results.csv"))}
    assert rows["SASRec"]["ndcg_warm@10_mean"] != "" and rows["SASRec"]["ndcg_cold@10_mean"] != ""
    assert float(rows["SASRec"]["targets_cold_mean"]) > 0
    table = (out / "results.md").read_text()
    assert "ndcg_cold@10" in table and "--cold_item_ratio=0.2" in table
    assert (out / "ndcg_warm_cold.png").stat().st_size > 1000
    # without the protocol there are no cold columns and no warm/cold plot
    plain = tmp_path / "plain"
    assert benchmark.main(tiny_args(tiny_data, plain, "SASRec")) == 0
    assert "ndcg_cold@10" not in (plain / "results.md").read_text() and not (plain / "ndcg_warm_cold.png").exists()


def test_cold_protocol_gets_a_teacher_per_seed(tiny_data, tmp_path, capsys):
    """Under the cold-start protocol each seed has its own cold items, so its own teacher (none saw them)."""
    out, features = tmp_path / "bench", tmp_path / "features"
    args = tiny_args(tiny_data, out, "LLMEmbSASRec", "1,2", "--cold_item_ratio=0.2", *llmemb_args(features))
    assert benchmark.main(args) == 0
    teachers = {json.load(open(out / "runs" / f"LLMEmbSASRec-{seed}.json"))["config"]["teacher_checkpoint"] for seed in (1, 2)}
    assert len(teachers) == 2 and all(os.path.isfile(t) for t in teachers)
