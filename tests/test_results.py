"""The results page (recbole_llm/results.py): built from run records the test writes, numbers checked by hand."""

import json
import os

import yaml

from recbole_llm.results import BEGIN, END, main


def legacy_run(seed, ndcg, tail, head, sec=2.0):
    metrics = {"ndcg@10": ndcg, "ndcg_tail@10": tail, "ndcg_head@10": head, "hit@10": 2 * ndcg}
    return {"seed": seed, "full": metrics, "uni100": {k: 3 * v for k, v in metrics.items()}, "sec_per_epoch": sec,
            "epochs": 10, "params": 100}


def benchmark_run(seed, ndcg, warm, cold, sec):
    return {"status": "ok", "test": {"ndcg@10": ndcg, "ndcg_warm@10": warm, "ndcg_cold@10": cold, "ndcg_tail@10": ndcg / 2},
            "train_seconds_per_epoch": sec, "epochs_run": 5, "num_params": 10,
            "config": {"seed": seed, "eval_args": {"mode": "full"}}}


def write_records(root):
    """A legacy JSON (SASRec and LLMESRSASRec on three seeds, a one-seed ablation, an extra seed SASRec lacks) and a
    benchmark folder of cold-protocol runs."""
    os.makedirs(os.path.join(root, "records"))
    sasrec = [legacy_run(1, 0.10, 0.05, 0.2), legacy_run(2, 0.20, 0.05, 0.2), legacy_run(3, 0.10, 0.05, 0.2)]
    llmesr = [legacy_run(1, 0.11, 0.05, 0.2, 4.0), legacy_run(2, 0.22, 0.05, 0.2, 4.0), legacy_run(3, 0.12, 0.05, 0.2, 4.0),
              legacy_run(9, 0.90, 0.05, 0.2, 4.0)]
    ablation = [dict(legacy_run(2, 0.30, 0.05, 0.2), llm_keys="x=1")]
    with open(os.path.join(root, "records", "toy.json"), "w") as handle:
        json.dump({"toy": {"SASRec": sasrec, "LLMESRSASRec": llmesr + ablation}}, handle)
    runs = os.path.join(root, "cold", "runs")
    os.makedirs(runs)
    for name, run in {"SASRec-1": benchmark_run(1, 0.05, 0.06, 0.0, 2.0), "SASRec-2": benchmark_run(2, 0.05, 0.06, 0.0, 2.0),
                      "LEARN-1": benchmark_run(1, 0.04, 0.04, 0.03, 6.0), "LEARN-2": benchmark_run(2, 0.04, 0.04, 0.05, 6.0)}.items():
        with open(os.path.join(runs, f"{name}.json"), "w") as handle:
            json.dump(run, handle)


def write_sources(root, **extra):
    spec = {"machine": "test machine",
            "glance": {"rows": ["SASRec", "LLMESRSASRec", "LEARN"],
                       "columns": [{"title": "toy NDCG@10", "source": "toy", "mode": "full", "metric": "ndcg@10"},
                                   {"title": "cold items", "source": "cold", "metric": "ndcg_cold@10", "show": "value"},
                                   {"title": "epoch time", "source": "cold", "metric": "sec_per_epoch", "show": "ratio"}]},
            "sources": [{"id": "toy", "title": "toy, three seeds", "legacy": ["records/toy.json"], "protocol": ["full", "uni100"],
                         "date": "2026-12-02", "command": "python make_toy.py"},
                        {"id": "cold", "title": "toy, cold protocol", "runs": "cold", "dataset": "toy", "protocol": "cold",
                         "date": "2026-12-02", **extra}]}
    path = os.path.join(root, "sources.yaml")
    with open(path, "w") as handle:
        yaml.safe_dump(spec, handle)
    return path


def build(tmp_path, *more):
    root = str(tmp_path)
    write_records(root)
    sources = write_sources(root)
    readme = os.path.join(root, "README.md")
    with open(readme, "w") as handle:
        handle.write(f"# toy\n\nintro\n\n{BEGIN}\nold table\n{END}\n\nrest of the README\n")
    out = os.path.join(root, "docs", "results.md")
    code = main([f"--sources={sources}", f"--out={out}", f"--root={root}", f"--readme={readme}", *more])
    return code, open(out).read(), open(readme).read(), root


def row_line(page, *starts):
    return next(line for line in page.splitlines() if line.startswith(starts))


def test_page_numbers_are_the_paired_changes_on_common_seeds(tmp_path):
    code, page, readme, root = build(tmp_path)
    assert code == 0
    # per-seed changes +10%, +10%, +20% (seed 9 has no SASRec run): mean +13.3%, t(0.975, 2) * s / sqrt(3) = 14.3 points
    line = row_line(page, "| LLMESRSASRec | full | 4 |")
    assert "+13.3% [-1.0, +27.7]" in line and "paired, 3 seeds" in line
    assert "| 0.3375 ± " in line  # the value column still averages all four seeds
    # the one-seed ablation against SASRec's own seed 2 (0.30 / 0.20), not against SASRec's mean over three seeds
    ablation = row_line(page, "| LLMESRSASRec [x=1] | full | 1 |")
    assert "+50.0%" in ablation and "one run" in ablation
    assert "| 0.9000 |" in row_line(page, "| LLMESRSASRec [x=1] | uni100 |")  # uni100 metrics are 3x the full ones here
    # the cold protocol: LEARN's cold NDCG@10 over its two seeds, n/a against SASRec's 0
    learn = row_line(page, "| LEARN | cold (full ranking) | 2 |")
    assert "0.0400 ± " in learn and "| n/a |" in learn
    assert "Records: [records/toy.json](../records/toy.json); run 2026-12-02." in page
    assert os.path.isfile(os.path.join(root, "docs", "results", "toy-full.png"))
    assert os.path.isfile(os.path.join(root, "docs", "results", "cold-full.png"))
    assert "](results/cold-full.png)" in page


def test_readme_block_rewritten_from_the_same_numbers(tmp_path):
    code, page, readme, _ = build(tmp_path, "--no_plots")
    assert code == 0
    assert "old table" not in readme and readme.startswith("# toy\n\nintro\n") and readme.endswith("rest of the README\n")
    glance = row_line(readme, "| LEARN |")
    assert glance == "| LEARN | not run | 0.0400 ± 0.1271 | 3.00x |"  # cold 0.03, 0.05: t(0.975, 1) 12.71 * s 0.01414 / sqrt(2)
    assert "(docs/results.md#toy-cold-protocol)" in readme
    assert row_line(readme, "| LLMESRSASRec |") in page  # the page's glance table is the README's


def test_bad_sources_are_one_line_naming_the_source(tmp_path, capsys):
    root = str(tmp_path)
    write_records(root)
    sources = write_sources(root, legacy=["records/toy.json"])  # both runs and legacy
    assert main([f"--sources={sources}", f"--out={root}/r.md", f"--root={root}", "--no_plots"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "source cold" in err and "exactly one of legacy / runs / suite" in err


def test_readme_without_the_markers_is_refused(tmp_path, capsys):
    root = str(tmp_path)
    write_records(root)
    sources = write_sources(root)
    readme = os.path.join(root, "README.md")
    with open(readme, "w") as handle:
        handle.write("# toy\n")
    assert main([f"--sources={sources}", f"--out={root}/r.md", f"--root={root}", f"--readme={readme}", "--no_plots"]) == 2
    assert BEGIN in capsys.readouterr().err and open(readme).read() == "# toy\n"


def test_a_suite_store_is_read_through_the_suite(tmp_path):
    """A source given as a suite file reads that suite's store (<out>/runs/<dataset>/<row>/<seed>.json)."""
    root = str(tmp_path)
    with open(os.path.join(root, "toy.yaml"), "w") as handle:
        yaml.safe_dump({"datasets": ["toy"], "seeds": [1, 2], "rows": {"SASRec": {"model": "SASRec"},
                        "LLMEmbSASRec": {"model": "LLMEmbSASRec"}}, "out": "elsewhere"}, handle)
    for row, values in {"SASRec": (0.10, 0.20), "LLMEmbSASRec": (0.12, 0.22)}.items():
        for seed, ndcg in zip((1, 2), values):
            path = os.path.join(root, "store", "runs", "toy", row, f"{seed}.json")
            os.makedirs(os.path.dirname(path), exist_ok=True)
            with open(path, "w") as handle:
                json.dump({"dataset": "toy", "row": row, "model": row, "seed": seed, "status": "ok", "sec_per_epoch": 1.0,
                           "modes": {"full": {"ndcg@10": ndcg, "ndcg_tail@10": ndcg, "ndcg_head@10": ndcg}}}, handle)
    with open(os.path.join(root, "sources.yaml"), "w") as handle:
        yaml.safe_dump({"sources": [{"id": "s", "title": "toy suite", "suite": "toy.yaml", "out": "store"}]}, handle)
    out = os.path.join(root, "results.md")
    assert main([f"--sources={root}/sources.yaml", f"--out={out}", f"--root={root}", "--no_plots"]) == 0
    line = row_line(open(out).read(), "| LLMEmbSASRec | full | 2 |")
    assert "+15.0% [" in line and "paired, 2 seeds" in line  # +20% and +10% per seed


def test_a_benchmark_folder_of_either_layout_gives_the_same_records(tmp_path):
    """A ``runs:`` source reads the engine's store (runs/<dataset>/<Model>/<seed>.json) and the former flat layout."""
    from recbole_llm.results import benchmark_records
    from recbole_llm.bench.store import write_record

    write_records(str(tmp_path))
    old = benchmark_records("toy", str(tmp_path / "cold"))
    for record in old:
        write_record(str(tmp_path / "new" / "runs" / "toy" / record["row"] / f"{record['seed']}.json"), dict(record, spec="x"))
    new = benchmark_records("toy", str(tmp_path / "new"))
    assert [{k: v for k, v in r.items() if k != "spec"} for r in new] == sorted(old, key=lambda r: (r["row"], r["seed"]))


def test_check_finds_a_page_its_records_no_longer_give(tmp_path, capsys):
    code, _, _, root = build(tmp_path)
    args = [f"--sources={root}/sources.yaml", f"--out={root}/docs/results.md", f"--root={root}", f"--readme={root}/README.md", "--check"]
    assert code == 0 and main(args) == 0
    path = os.path.join(root, "cold", "runs", "LEARN-2.json")
    run = json.load(open(path))
    run["test"]["ndcg_cold@10"] = 0.07
    json.dump(run, open(path, "w"))
    assert main(args) == 1
    assert "results.md is not what its records give" in capsys.readouterr().out


def test_the_committed_page_and_readme_block_are_what_the_records_give():
    """docs/results.md and the README's glance block are generated: after new records, run the command it prints."""
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    assert main([f"--sources={root}/benchmarks/results.yaml", f"--out={root}/docs/results.md", f"--root={root}",
                 f"--readme={root}/README.md", "--check"]) == 0
