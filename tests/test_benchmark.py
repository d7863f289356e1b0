"""The benchmark command: files, resume, a failing model recorded while the others go on."""

import csv
import json
import os
import sys

import pytest


from recbole_llm import benchmark


def run_file(out, model, seed, dataset="tiny"):
    return out / "runs" / dataset / model / f"{seed}.json"


def csv_rows(out):
    return {r["model"]: r for r in csv.DictReader(open(out / "results.csv"))}


def test_benchmark_files_resume_and_failure(tiny_data, tmp_path, monkeypatch, capsys):
    from recbole_llm.bench import execute as engine

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
    err = capsys.readouterr().err
    assert "error: 2 of 6 runs failed (tiny NoSuchModel seed 1: UnknownNameError" in err and "--rerun_failed" in err
    rows = csv_rows(out)
    assert rows["SASRec"]["seeds"] == "2" and float(rows["SASRec"]["ndcg@10_mean"]) > 0
    assert rows["SASRec"]["ndcg@10_ci95_low"] != "" and float(rows["SASRec"]["ndcg@10_ci95_high"]) >= float(rows["SASRec"]["ndcg@10_mean"])
    assert rows["GRU4Rec"]["seeds"] == "2" and rows["GRU4Rec"]["ndcg_tail@10_mean"] != ""
    assert rows["NoSuchModel"]["failed"] == "2" and "Unknown model 'NoSuchModel'" in rows["NoSuchModel"]["error"]
    table = (out / "results.md").read_text()
    assert table.startswith("Benchmark on tiny: `python -m recbole_llm.benchmark --dataset=tiny --models=SASRec,GRU4Rec,NoSuchModel")
    assert "| tiny | SASRec | full | 2 |" in table and "±" in table and "| tiny | NoSuchModel | failed: UnknownNameError" in table
    assert (out / "ndcg_head_tail_tiny_full.png").stat().st_size > 1000
    assert (out / "ndcg_by_popularity_tiny_full.png").stat().st_size > 1000
    run = json.load(open(run_file(out, "SASRec", 1)))
    assert run["status"] == "ok" and sum(b["rows"] for b in run["popularity_buckets"]["full"].values()) == 40
    assert run["config"]["hidden_size"] == 16 and run["config"]["epochs"] == 1

    # resume: nothing is trained again, the failed runs stay failed (no --rerun_failed)
    calls = []
    original = engine.execute_run
    monkeypatch.setattr(engine, "execute_run", lambda *a, **k: calls.append(a[1:4]) or original(*a, **k))
    assert benchmark.main(args) == 1
    assert calls == [] and "tiny SASRec seed 1: done before (ok), skipping" in capsys.readouterr().out
    # --rerun_failed: only the failed runs go again (they fail in preparing their artifacts: nothing trains)
    assert benchmark.main(args + ["--rerun_failed"]) == 1
    out_text = capsys.readouterr().out
    assert calls == [] and "tiny NoSuchModel seed 1: failed" in out_text and "tiny GRU4Rec seed 2: done before (ok)" in out_text
    # another --key=value (or eval mode, epochs) is another run: its records run again, not reused under the new header
    changed = [a for a in args if not a.startswith("--models")] + ["--models=SASRec", "--hidden_size=8"]
    assert benchmark.main(changed) == 0
    assert sorted(c[2] for c in calls) == [1, 2] and "tiny SASRec seed 1: it ran with other keys" in capsys.readouterr().out
    assert json.load(open(run_file(out, "SASRec", 1)))["config"]["hidden_size"] == 8
    # ... and the same command again skips them
    calls.clear()
    assert benchmark.main(changed) == 0 and calls == []
    table = (out / "results.md").read_text()
    assert "--hidden_size=8" in table and "GRU4Rec" not in table  # the table of this command's rows only


def test_a_changed_key_reruns_and_the_same_keys_skip(tmp_path, monkeypatch, capsys):
    """The resume rule, without training: the record's spec names what it ran with (keys, epochs, eval mode, config
    files); a rerun with the same ones skips, any change reruns exactly the runs it changes."""
    calls = fake_engine(monkeypatch)
    (tmp_path / "a.yaml").write_text("hidden_size: 8\n")
    base = ["--dataset=d", "--models=SASRec,GRU4Rec", "--seeds=1,2", f"--out={tmp_path / 'out'}", "--epochs=2", "--dropout_prob=0.2"]
    assert benchmark.main(base) == 0 and len(calls) == 4
    for same in (base, base[::-1]):  # the same keys in another order: skipped
        calls.clear()
        assert benchmark.main(same) == 0 and calls == []
    changes = {"--dropout_prob=0.3": 4, "--epochs=3": 4, "--eval_mode=uni100": 4, f"--config_files={tmp_path / 'a.yaml'}": 4}
    for change, runs in changes.items():
        calls.clear()
        args = [a for a in base if a.split("=")[0] != change.split("=")[0]] + [change]
        assert benchmark.main(args) == 0 and len(calls) == runs, change
        calls.clear()
        assert benchmark.main(args) == 0 and calls == [], change  # and again: skipped
    assert benchmark.main(base) == 0 and len(calls) == 4  # back to the first keys: their runs again
    calls.clear()
    assert benchmark.main(base + ["--models=SASRec,GRU4Rec,BPR"]) == 0 and calls == [("BPR", 1), ("BPR", 2)]
    assert "d SASRec seed 1: done before (ok), skipping" in capsys.readouterr().out


def test_an_old_benchmark_folder_is_refused_in_one_line(tmp_path, capsys):
    out = tmp_path / "old"
    (out / "runs").mkdir(parents=True)
    (out / "runs" / "SASRec-42.json").write_text(json.dumps({"status": "ok", "test": {"ndcg@10": 0.1}}))
    assert benchmark.main(["--dataset=tiny", "--models=SASRec", f"--out={out}"]) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and str(out) in err and "former layout" in err and "pass another --out" in err
    assert sorted(os.listdir(out / "runs")) == ["SASRec-42.json"]  # nothing written


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
    """Relative paths of what the benchmark writes for the table (checkpoints, worker logs and the store's lock aside)."""
    return sorted(str(p.relative_to(out)) for p in out.rglob("*")
                  if p.is_file() and p.relative_to(out).parts[0] not in ("saved", "logs", ".suite.lock"))


def test_mean_ci_hand_example():
    from recbole_llm.reporting import mean_ci, t_quantile_975

    mean, half = mean_ci([1, 2, 3])
    # s = 1, t(0.975, 2) = 4.302653: half-width 4.302653 / sqrt(3)
    assert mean == 2 and half == pytest.approx(2.484, abs=5e-4)
    assert mean_ci([0.5]) == (0.5, None)
    assert mean_ci([]) == (None, None)
    assert mean_ci([0.2, 0.2, 0.2]) == (pytest.approx(0.2), 0.0)
    known = {1: 12.7062, 2: 4.3027, 10: 2.2281, 30: 2.0423, 31: 2.0395, 60: 2.0003, 120: 1.9799, 10**6: 1.9600}
    for df, value in known.items():
        assert t_quantile_975(df) == pytest.approx(value, abs=1e-4)
    with pytest.raises(ValueError):
        t_quantile_975(0)


def test_two_workers_same_files_as_one_and_resume(tiny_data, tmp_path, monkeypatch, capsys):
    import torch

    from recbole_llm.bench import execute as engine
    from recbole_llm import workers

    monkeypatch.setattr(workers, "available_cores", lambda: 2)  # 2 workers x 1 thread, like the serial run below
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
    assert "2 runs in 2 worker processes, 1 thread(s) each" in out and "tiny-SASRec-1: started" in out

    assert result_files(serial) == result_files(parallel)
    assert result_files(parallel) == sorted(
        ["results.csv", "results.md", "results.json", "ndcg_head_tail_tiny_full.png", "ndcg_by_popularity_tiny_full.png",
         "runs/tiny/SASRec/1.json", "runs/tiny/GRU4Rec/1.json"]
    )
    for model in ("SASRec", "GRU4Rec"):
        one = json.load(open(run_file(serial, model, 1)))
        two = json.load(open(run_file(parallel, model, 1)))
        assert two["status"] == "ok" and two["torch_threads"] == 1
        assert two["modes"] == one["modes"] and two["params"] == one["params"]
        assert two["popularity_buckets"] == one["popularity_buckets"]
        # the extra --key=value pairs reached the worker; only the checkpoint folder differs
        assert {k: v for k, v in two["config"].items() if k != "checkpoint_dir"} == {k: v for k, v in one["config"].items() if k != "checkpoint_dir"}
        assert two["config"]["hidden_size"] == 16 and two["model_file"].startswith(str(parallel / "saved" / "tiny" / model))
        assert (parallel / "logs" / f"tiny-{model}-1.log").is_file() and not (parallel / "logs" / f"tiny-{model}-1.job.json").exists()
    timing = ("train_seconds_per_epoch", "eval_seconds")
    rows_one = [{k: v for k, v in r.items() if k not in timing} for r in csv.DictReader(open(serial / "results.csv"))]
    rows_two = [{k: v for k, v in r.items() if k not in timing} for r in csv.DictReader(open(parallel / "results.csv"))]
    assert rows_one == rows_two

    # resume with workers: nothing finished is run again, no worker is started
    started = []
    original = engine.worker_command
    monkeypatch.setattr(engine, "worker_command", lambda job_file: started.append(job_file) or original(job_file))
    assert benchmark.main(args) == 0
    assert started == [] and "tiny GRU4Rec seed 1: done before (ok), skipping" in capsys.readouterr().out
    # a run whose record is gone runs again, alone (one pending run: in this process, no worker)
    run_file(parallel, "GRU4Rec", 1).unlink()
    assert benchmark.main(args) == 0
    assert started == [] and json.load(open(run_file(parallel, "GRU4Rec", 1)))["status"] == "ok"
    # two gone: two workers again
    run_file(parallel, "GRU4Rec", 1).unlink()
    run_file(parallel, "SASRec", 1).unlink()
    assert benchmark.main(args) == 0
    assert sorted(os.path.basename(f) for f in started) == ["tiny-GRU4Rec-1.job.json", "tiny-SASRec-1.job.json"]
    assert json.load(open(run_file(parallel, "GRU4Rec", 1)))["status"] == "ok"
    assert list(csv.DictReader(open(parallel / "results.csv")))[1]["seeds"] == "1"


def test_failing_worker_is_recorded_and_others_go_on(tiny_data, tmp_path, monkeypatch):
    """GRU4Rec raises inside its worker process, BPR's worker dies without a result; SASRec still finishes."""
    from recbole_llm.bench import execute as engine

    out = tmp_path / "bench"
    raising = (
        "import sys\n"
        "from recbole_llm import quick_start\nfrom recbole_llm.bench import execute\n"
        "def boom(*args, **kwargs):\n"
        "    raise RuntimeError('boom inside the worker')\n"
        "quick_start.run_recbole_llm = boom\n"
        "sys.exit(execute.worker_main(sys.argv[1]))\n"
    )
    original = engine.worker_command

    def command(job_file):
        if os.path.basename(job_file).startswith("tiny-GRU4Rec"):
            return [sys.executable, "-c", raising, job_file]
        if os.path.basename(job_file).startswith("tiny-BPR"):
            return [sys.executable, "-c", "import os; print('dying'); os._exit(3)"]
        return original(job_file)

    monkeypatch.setattr(engine, "worker_command", command)
    assert benchmark.main(tiny_args(tiny_data, out, "GRU4Rec,BPR,SASRec,NoSuchModel", "1", "--workers=2")) == 1
    gru = json.load(open(run_file(out, "GRU4Rec", 1)))
    assert gru["status"] == "failed" and gru["error"] == "RuntimeError: boom inside the worker" and "boom" in gru["traceback"]
    bpr = json.load(open(run_file(out, "BPR", 1)))
    assert bpr["status"] == "failed" and "worker exited with code 3 without a result" in bpr["error"] and "dying" in bpr["traceback"]
    assert json.load(open(run_file(out, "SASRec", 1)))["status"] == "ok"
    no_such = json.load(open(run_file(out, "NoSuchModel", 1)))
    assert no_such["stage"] == "prepare_artifacts" and "Unknown model 'NoSuchModel'" in no_such["error"]
    rows = {r["model"]: r for r in csv.DictReader(open(out / "results.csv"))}
    assert rows["GRU4Rec"]["failed"] == "1" and rows["GRU4Rec"]["error"] == "RuntimeError: boom inside the worker"
    assert rows["BPR"]["failed"] == "1" and rows["SASRec"]["seeds"] == "1"
    assert "| tiny | GRU4Rec | failed: RuntimeError: boom inside the worker |" in (out / "results.md").read_text()


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
            run = json.load(open(run_file(out, model, seed)))
            assert run["status"] == "ok", run.get("error")
            configs.append(run["config"])
            log = (out / "logs" / f"tiny-{model}-{seed}.log").read_text()
            assert "teacher: training" not in log and "wrote" not in log  # nothing built in the workers
    assert {c["teacher_checkpoint"] for c in configs} == {str(teachers[0])}
    assert len({c["llm_feature"] for c in configs}) == 1 and all(c["feature_dir"] == str(features) for c in configs)


# ---- suites (recbole_llm/bench/) -----------------------------------------------------------------------------------
def record(seed, ndcg, row="SASRec", dataset="d", status="ok"):
    from recbole_llm.suite import DEFAULT_METRICS

    metrics = {m: ndcg for m in DEFAULT_METRICS}
    return {"dataset": dataset, "row": row, "model": row.split(" [")[0], "seed": seed, "status": status,
            "modes": {"full": metrics, "uni100": metrics}, "sec_per_epoch": 1.0, "epochs": 5, "params": 10}


def test_suite_tables_with_paired_intervals():
    from recbole_llm.bench.report import build_tables, relative_change
    from recbole_llm.bench.spec import DEFAULT_METRICS

    records = [record(s, 0.1) for s in (1, 2, 3)] + [record(s, v, "LLMEmbSASRec") for s, v in zip((1, 2, 3), (0.11, 0.12, 0.13))]
    table = build_tables(records, [("SASRec", "LLMEmbSASRec")], ["full", "uni100"], DEFAULT_METRICS, "header")
    # per-seed changes +10%, +20%, +30%: mean +20%, half-width 4.3027 * 10 / sqrt(3) = 24.8 points
    assert "| d | SASRec -> LLMEmbSASRec | full | +20.0% [-4.8, +44.8] |" in table and "paired, 3 seeds" in table
    assert "| d | LLMEmbSASRec | uni100 | 3 | 0.1200 ± 0.0248 |" in table
    # no common seeds: ratio of means with a delta-method interval
    base, other = [record(1, 0.1), record(2, 0.1)], [record(3, 0.11, "L"), record(4, 0.13, "L")]
    change, half, how = relative_change(base, other, lambda r: r["modes"]["full"]["ndcg@10"])
    assert how == "ratio of means" and change == pytest.approx(0.2) and half == pytest.approx(12.7062 * 0.01 / 0.1, rel=1e-4)
    one = build_tables([record(1, 0.1), record(1, 0.15, "LLMEmbSASRec")], [("SASRec", "LLMEmbSASRec")], ["full"], DEFAULT_METRICS, "h")
    assert "| +50.0% | +50.0% | +50.0% | 1.00x | one run |" in one and "| d | SASRec | full | 1 | 0.1000 |" in one


def write_suite(path, **extra):
    import yaml

    suite = {"datasets": ["d"], "seeds": [1, 2], "rows": {"SASRec": {"model": "SASRec"}, "LLMEmbSASRec": {"model": "LLMEmbSASRec"}},
             "pairs": [["SASRec", "LLMEmbSASRec"]], "out": str(path.parent / "out"), **extra}
    path.write_text(yaml.safe_dump(suite))
    return str(path)


def test_suite_resumes_and_retries_failed_runs(tmp_path, monkeypatch, capsys):
    from recbole_llm.bench import execute as engine
    from recbole_llm.suite import load_suite

    calls = fake_engine(monkeypatch)
    path = write_suite(tmp_path / "s.yaml")
    assert benchmark.main([f"--suite={path}"]) == 0 and len(calls) == 4
    loaded = load_suite(path)
    os.remove(engine.run_path(loaded, "d", "SASRec", 2))  # lose one finished run
    engine.write_record(engine.run_path(loaded, "d", "LLMEmbSASRec", 1), record(1, 0.1, "LLMEmbSASRec", status="failed"))
    calls.clear()
    assert benchmark.main([f"--suite={path}"]) == 0
    assert sorted(calls) == [("LLMEmbSASRec", 1), ("SASRec", 2)]  # only the missing and the failed runs
    table = (tmp_path / "out" / "results.md").read_text()
    assert "| d | SASRec -> LLMEmbSASRec | full | +0.0% [+0.0, +0.0] |" in table
    assert len(json.loads((tmp_path / "out" / "results.json").read_text())) == 4
    # a row whose keys changed runs again; the others are still done
    write_suite(tmp_path / "s.yaml", rows={"SASRec": {"model": "SASRec"}, "LLMEmbSASRec": {"model": "LLMEmbSASRec", "align_alpha": 0.0}})
    calls.clear()
    assert benchmark.main([f"--suite={path}"]) == 0
    assert sorted(calls) == [("LLMEmbSASRec", 1), ("LLMEmbSASRec", 2)]


@pytest.mark.parametrize("extra, message", [
    ({"epochs": 3}, "unknown key 'epochs'"),
    ({"pairs": [["SASRec", "LLMEmb"]]}, "pair ['SASRec', 'LLMEmb'] must name two rows"),
    ({"rows": {"A": {"train_mode": "prefix"}}}, "row 'A' has no 'model' key"),
    ({"eval_modes": ["pop100"]}, "eval_modes must be full and/or uni100"),
    ({"datasets": "scientific"}, "key 'datasets' must be a list of dataset names"),
    ({"seeds": 2020}, "key 'seeds' must be a list of integers"),
    ({"workers": "two"}, "key 'workers' must be an integer >= 1"),
])
def test_bad_suite_file_is_one_line(tmp_path, capsys, extra, message):
    path = write_suite(tmp_path / "s.yaml", **extra)
    assert benchmark.main([f"--suite={path}"]) == 2
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1


def test_legacy_results_merge_once_and_ablations_are_rows(tmp_path):
    from recbole_llm.errors import ConfigError
    from recbole_llm.bench.report import build_tables
    from recbole_llm.bench.spec import DEFAULT_METRICS
    from recbole_llm.bench.store import legacy_records

    def run(seed, value, **extra):
        metrics = {m: value for m in DEFAULT_METRICS}
        return {"seed": seed, "full": metrics, "uni100": metrics, "sec_per_epoch": 1.0, "epochs": 5, "params": 10, **extra}

    base = {"d": {"SASRec": [run(1, 0.1), run(2, 0.1)], "LLMEmbSASRec": [run(1, 0.12), run(2, 0.12)]}}
    ablation = {"d": {"SASRec": base["d"]["SASRec"], "LLMEmbSASRec": [run(s, 0.11, llm_keys="adapter_layers=1") for s in (1, 2)]}}
    (tmp_path / "a.json").write_text(json.dumps(base))
    (tmp_path / "b.json").write_text(json.dumps(ablation))
    records = legacy_records([str(tmp_path / "a.json"), str(tmp_path / "b.json")])
    assert sum(r["row"] == "SASRec" for r in records) == 2  # the baseline copied into the ablation's file counts once
    table = build_tables(records, [("SASRec", "LLMEmbSASRec")], ["full"], DEFAULT_METRICS, "h")
    assert "| d | SASRec -> LLMEmbSASRec | full | +20.0% [+20.0, +20.0] |" in table
    assert "| d | SASRec -> LLMEmbSASRec [adapter_layers=1] | full | +10.0% [+10.0, +10.0] |" in table
    ablation["d"]["SASRec"] = [run(1, 0.2), run(2, 0.1)]
    (tmp_path / "c.json").write_text(json.dumps(ablation))
    with pytest.raises(ConfigError, match="hold different results for d SASRec seed 1"):
        legacy_records([str(tmp_path / "a.json"), str(tmp_path / "c.json")])


def test_suite_on_ml100k_two_models_two_modes_one_seed(tmp_path):
    """The issue's check: a real suite, full and uni100 from one checkpoint, the paired table written."""
    small = {"hidden_size": 16, "embedding_size": 16, "inner_size": 32, "n_layers": 1, "n_heads": 1, "train_batch_size": 256,
             "train_mode": "all_positions", "feature_dir": str(tmp_path / "f")}
    path = write_suite(tmp_path / "s.yaml", datasets=["ml-100k"], seeds=[2020], eval_modes=["full", "uni100"],
                       budget={"epochs": 1}, config=small,
                       rows={"SASRec": {"model": "SASRec"}, "LLMEmbSASRec": {"model": "LLMEmbSASRec", "teacher_epochs": 1}})
    assert benchmark.main([f"--suite={path}"]) == 0
    records = json.loads((tmp_path / "out" / "results.json").read_text())
    assert {r["row"] for r in records} == {"SASRec", "LLMEmbSASRec"} and all(r["status"] == "ok" for r in records)
    for r in records:
        assert set(r["modes"]) == {"full", "uni100"} and r["modes"]["uni100"]["ndcg@10"] > r["modes"]["full"]["ndcg@10"]
    table = (tmp_path / "out" / "results.md").read_text()
    assert "| ml-100k | SASRec -> LLMEmbSASRec | full |" in table and "| ml-100k | SASRec -> LLMEmbSASRec | uni100 |" in table
    assert (tmp_path / "out" / "ndcg_head_tail_ml-100k_uni100.png").stat().st_size > 1000


def test_benchmark_with_cold_items_reports_warm_and_cold(tiny_data, tmp_path):
    out = tmp_path / "bench"
    assert benchmark.main(tiny_args(tiny_data, out, "SASRec", "1,2", "--cold_item_ratio=0.2")) == 0
    rows = {r["model"]: r for r in csv.DictReader(open(out / "results.csv"))}
    assert rows["SASRec"]["ndcg_warm@10_mean"] != "" and rows["SASRec"]["ndcg_cold@10_mean"] != ""
    assert float(rows["SASRec"]["targets_cold_mean"]) > 0
    table = (out / "results.md").read_text()
    assert "ndcg_cold@10" in table and "--cold_item_ratio=0.2" in table
    assert (out / "ndcg_warm_cold_tiny_full.png").stat().st_size > 1000
    # without the protocol there are no cold columns and no warm/cold plot
    plain = tmp_path / "plain"
    assert benchmark.main(tiny_args(tiny_data, plain, "SASRec")) == 0
    assert "ndcg_cold@10" not in (plain / "results.md").read_text() and not (plain / "ndcg_warm_cold_tiny_full.png").exists()


def test_cold_protocol_gets_a_teacher_per_seed(tiny_data, tmp_path, capsys):
    """Under the cold-start protocol each seed has its own cold items, so its own teacher (none saw them)."""
    out, features = tmp_path / "bench", tmp_path / "features"
    args = tiny_args(tiny_data, out, "LLMEmbSASRec", "1,2", "--cold_item_ratio=0.2", *llmemb_args(features))
    assert benchmark.main(args) == 0
    teachers = {json.load(open(run_file(out, "LLMEmbSASRec", seed)))["config"]["teacher_checkpoint"] for seed in (1, 2)}
    assert len(teachers) == 2 and all(os.path.isfile(t) for t in teachers)


def fake_engine(monkeypatch):
    """The suite engine with runs that write a record instead of training; returns the (row, seed) list of calls."""
    from recbole_llm.bench import execute as engine

    calls = []

    def fake_execute(suite, dataset, row, seed, shared=None, threads=None, run_id=None):
        calls.append((row, seed))
        rec = dict(record(seed, 0.1, row, dataset), spec=engine.run_spec(suite, dataset, row, seed))
        engine.write_record(engine.run_path(suite, dataset, row, seed), rec)
        return rec

    monkeypatch.setattr(engine, "execute_run", fake_execute)
    monkeypatch.setattr(engine, "prepare_runs", lambda suite, pending: [(*run, {}) for run in pending])
    return calls


def test_every_committed_suite_file_loads():
    """A suite file is a command of the docs: each one in benchmarks/suites parses and validates (a comment line that
    lost its '#' once broke one while its driver was about to start)."""
    import glob

    from recbole_llm.bench.spec import load_suite

    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    files = sorted(glob.glob(os.path.join(root, "benchmarks", "suites", "*.yaml")))
    assert len(files) > 5
    for path in files:
        suite = load_suite(path)
        assert suite["rows"] and suite["seeds"], path
