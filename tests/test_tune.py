"""Ray Tune search: RecBole hyper format, trial table, failing trial recorded, best config re-runs."""

import csv
import math
import os
import subprocess
import sys

import pytest
import yaml
from conftest import ROOT

from recbole_llm.tune import HyperFileError, parse_hyper_file, to_ray_space


def test_parse_recbole_hyper_format(tmp_path):
    path = tmp_path / "p.hyper"
    path.write_text("learning_rate loguniform -8,0\nhidden_size choice [64,128]  # comment\n\ndropout_prob uniform 0.1,0.5\nn quniform 1,5,1\n")
    space = parse_hyper_file(str(path))
    assert space == {
        "learning_rate": ("loguniform", [-8.0, 0.0]),
        "hidden_size": ("choice", [64, 128]),
        "dropout_prob": ("uniform", [0.1, 0.5]),
        "n": ("quniform", [1.0, 5.0, 1.0]),
    }
    ray_space = to_ray_space(space)
    lr = ray_space["learning_rate"]
    assert lr.lower == pytest.approx(math.exp(-8)) and lr.upper == pytest.approx(1.0)  # RecBole's exponent bounds
    # integer bounds and step give integers: a float 2.0 for n_layers failed every trial ("must be an integer >= 1")
    samples = [ray_space["n"].sample() for _ in range(50)]
    assert all(isinstance(v, int) for v in samples) and set(samples) <= {1, 2, 3, 4, 5}
    assert isinstance(to_ray_space({"p": ("quniform", [0.1, 0.5, 0.1])})["p"].sample(), float)
    with pytest.raises(HyperFileError, match="grid search needs 'choice'"):
        to_ray_space(space, "grid")
    path.write_text("hidden_size choice 64\n")
    with pytest.raises(HyperFileError, match="p.hyper:1"):
        parse_hyper_file(str(path))
    with pytest.raises(HyperFileError, match="not found"):
        parse_hyper_file(str(tmp_path / "missing.hyper"))


def test_two_trial_search_records_failure_and_best_config_reruns(tiny_data, tmp_path):
    params = tmp_path / "p.hyper"
    params.write_text("n_heads choice [1,3]\n")  # 3 heads do not divide hidden 16: that trial fails
    out = tmp_path / "search"
    common = [
        "--dataset=tiny",
        f"--data_path={tiny_data}",
        "--epochs=2",
        "--hidden_size=16",
        "--inner_size=32",
        "--MAX_ITEM_LIST_LENGTH=10",
        "--load_col={'inter':['user_id','item_id','timestamp']}",
    ]
    proc = subprocess.run(
        [sys.executable, os.path.join(ROOT, "run_hyper.py"), "--model=SASRec", f"--params_file={params}", "--search=grid",
         "--scheduler=fifo", "--num_cpus=2", f"--output={out}", *common],
        capture_output=True, text=True, timeout=300, cwd=str(tmp_path),
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = list(csv.DictReader(open(out / "trials.csv")))
    assert len(rows) == 2
    by_heads = {r["n_heads"]: r for r in rows}
    assert by_heads["3"]["status"] == "ERROR" and "attention heads" in by_heads["3"]["error"]
    assert by_heads["1"]["status"] == "TERMINATED" and float(by_heads["1"]["best_valid_NDCG@10"]) > 0
    assert by_heads["1"]["test_NDCG@10"] != ""
    assert "| ERROR |" in (out / "trials.md").read_text()
    best = yaml.safe_load(open(out / "best_config.yaml"))
    assert best["n_heads"] == 1 and best["hidden_size"] == 16
    rerun = subprocess.run(
        [sys.executable, os.path.join(ROOT, "run_recbole_llm.py"), "--model=SASRec", "--dataset=tiny",
         f"--config_files={out / 'best_config.yaml'}", f"--checkpoint_dir={tmp_path / 'saved'}"],
        capture_output=True, text=True, timeout=300, cwd=str(tmp_path),
    )
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    assert "test result" in rerun.stdout


def test_unknown_key_in_params_file_stops_before_ray(tiny_data, tmp_path, capsys):
    """A misspelt key made every trial fail and the search exit 0; now one line, exit 2, before any artifact or Ray."""
    import run_hyper

    params = tmp_path / "p.hyper"
    params.write_text("learning_rate loguniform -8,-5\nhiden_size choice [16,32]\n")
    out = tmp_path / "search"
    code = run_hyper.main(["--model=SASRec", "--dataset=tiny", f"--data_path={tiny_data}", f"--params_file={params}", f"--output={out}"])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1
    assert f"params file '{params}': unknown config key 'hiden_size' (did you mean 'hidden_size'?)" in err
    assert not out.exists()
    code = run_hyper.main(["--model=SASRec", "--dataset=tiny", f"--data_path={tiny_data}", f"--params_file={os.path.join(ROOT, 'hyper', 'sasrec.hyper')}",
                           f"--output={out}", "--epoch=1"])  # the fixed config is checked before Ray too
    err = capsys.readouterr().err
    assert code == 2 and "unknown config key 'epoch' (did you mean 'epochs'?)" in err and not out.exists()


def test_every_trial_failing_exits_non_zero(tiny_data, tmp_path):
    params = tmp_path / "p.hyper"
    params.write_text("n_heads choice [3]\n")  # 3 heads do not divide hidden 16: the only trial fails
    out = tmp_path / "search"
    proc = subprocess.run(
        [sys.executable, os.path.join(ROOT, "run_hyper.py"), "--model=SASRec", "--dataset=tiny", f"--data_path={tiny_data}",
         f"--params_file={params}", "--search=grid", "--scheduler=fifo", "--num_cpus=1", f"--output={out}", "--epochs=1",
         "--hidden_size=16", "--inner_size=32", "--load_col={'inter':['user_id','item_id','timestamp']}"],
        capture_output=True, text=True, timeout=300, cwd=str(tmp_path),
    )
    assert proc.returncode == 1, proc.stderr[-3000:]
    assert "error: all 1 trials failed" in proc.stderr and "attention heads" in proc.stderr
    assert list(csv.DictReader(open(out / "trials.csv")))[0]["status"] == "ERROR"
