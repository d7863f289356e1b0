"""RecBole's DDP on CPU (gloo): training with nproc=2 and metrics gathered across ranks (issue 22)."""

import os
import socket

import pytest
import torch

from tests.conftest import tiny_config, write_tiny_dataset


def free_port():
    with socket.socket() as sock:
        sock.bind(("localhost", 0))
        return sock.getsockname()[1]


def test_gather_rows_restores_dataset_order_and_cuts_the_padding():
    from recbole_llm.evaluator.collector import gather_rows

    rows = torch.arange(7) * 10  # 7 rows over 3 ranks: DistributedSampler pads the index list to 9 with rows 0, 1
    padded = torch.cat([rows, rows[:2]])
    parts = [padded[rank::3] for rank in range(3)]
    assert torch.equal(gather_rows(parts, 7), rows)
    two_d = [p.unsqueeze(1).repeat(1, 2) for p in parts]
    assert torch.equal(gather_rows(two_d, 7), rows.unsqueeze(1).repeat(1, 2))
    with pytest.raises(RuntimeError, match="same number"):
        gather_rows([rows[:3], rows[:2]], 5)


@pytest.fixture
def odd_data(tmp_path):
    # 41 users: the test split does not divide by 2, so the sampler repeats a row that must not count twice
    return write_tiny_dataset(str(tmp_path / "data"), n_users=41)


def trained_checkpoint(odd_data, tmp_path):
    from recbole_llm import run_recbole_llm

    result = run_recbole_llm(model="SASRec", dataset="tiny", config_dict=tiny_config(odd_data, tmp_path, epochs=2))
    return result


def test_metrics_gathered_across_two_ranks_equal_one_process(odd_data, tmp_path):
    """Same weights, same test rows (full ranking): two gloo processes report exactly the single-process metrics.
    (uni100 draws its negatives per batch, so other shards draw other negatives: equal in distribution only.)"""
    from recbole_llm.quick_start import evaluate_model_file

    model_file = trained_checkpoint(odd_data, tmp_path)["model_file"]
    single = evaluate_model_file(model_file)
    two = evaluate_model_file(model_file, nproc=2, port=free_port())
    assert dict(two) == dict(single)
    assert single["ndcg@10"] > 0 and "ndcg_tail@10" in two


def test_training_with_two_processes_reports_the_usual_results(odd_data, tmp_path):
    from recbole_llm import run_recbole_llm

    single = trained_checkpoint(odd_data, tmp_path)
    config = tiny_config(odd_data, tmp_path, epochs=2, nproc=2, port=free_port())
    result = run_recbole_llm(model="SASRec", dataset="tiny", config_dict=config)
    assert list(result["test_result"]) == list(single["test_result"])
    assert result["epochs_run"] == 2 and torch.load(result["model_file"], weights_only=False)["config"]["world_size"] == 2
    # the DDP checkpoint loads in one process and gives the metrics the two processes reported
    from recbole_llm.quick_start import evaluate_model_file

    assert dict(evaluate_model_file(result["model_file"])) == dict(result["test_result"])


def test_cli_llmemb_with_two_processes(tmp_path, capsys):
    """The issue's command on the tiny dataset: artifacts built once in the launcher, then two gloo processes."""
    from tests.test_bad_input import load_cli

    data = write_tiny_dataset(str(tmp_path / "data"))
    run = load_cli("run_recbole_llm")
    code = run.main(["--model=LLMEmbSASRec", "--dataset=tiny", f"--data_path={data}", "--epochs=1", "--nproc=2",
                     f"--port={free_port()}", "--teacher_epochs=1", f"--feature_dir={tmp_path / 'f'}",
                     f"--checkpoint_dir={tmp_path / 's'}", "--state=WARNING", "--show_progress=False", "--hidden_size=16",
                     "--inner_size=32", "--n_layers=1", "--n_heads=1", "--train_batch_size=16"])
    out = capsys.readouterr()
    assert code == 0, out.err[-2000:]
    assert out.out.count("'ndcg@10': ") == 2 and "'ndcg_tail@10': " in out.out


def test_a_rank_frees_its_ddp_wrapper_before_leaving_the_group(tmp_path):
    """A DDP wrapper caught in a reference cycle (as RecBole's trainer holds it) is freed before the group is left,
    not at interpreter shutdown (where its gloo reducer could abort the process: CI, SIGABRT)."""
    import gc
    import pickle

    import torch.distributed as dist

    from recbole_llm.quick_start import _rank_result

    def alive():
        return sum(isinstance(o, torch.nn.parallel.DistributedDataParallel) for o in gc.get_objects())

    def compute():
        holder = {"model": torch.nn.parallel.DistributedDataParallel(torch.nn.Linear(2, 2))}
        holder["self"] = holder  # a cycle: only a garbage collection frees it
        return {"ok": alive()}

    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{free_port()}", rank=0, world_size=1)
    gc.disable()
    try:
        _rank_result(compute, str(tmp_path / "result.pkl"))
        left = alive()
    finally:
        gc.enable()
        if dist.is_initialized():
            dist.destroy_process_group()
    with open(tmp_path / "result.pkl", "rb") as handle:
        assert pickle.load(handle) == {"ok": 1}
    assert left == 0 and not dist.is_initialized()


# ---- LLM feature extraction on Ray ---------------------------------------------------------------------
@pytest.fixture(scope="module")
def local_ray():
    ray = pytest.importorskip("ray")
    from recbole_llm.compat import import_ray_data
    from recbole_llm.errors import ConfigError

    try:
        import_ray_data()
    except ConfigError as err:  # requirements.txt's ray 2.6.3: .ci/run's second set (ray 2.60) runs these tests
        pytest.skip(str(err))
    yield
    ray.shutdown()


def test_features_cli_on_ray_equals_single_process(tiny_data, tmp_path, capsys, local_ray):
    """The documented command with a local Ray of 2 actors: the same rows as one process, attached as usual."""
    import numpy as np

    from recbole_llm import Config, create_dataset
    from recbole_llm.features import main
    from recbole_llm.llm.features import load_features

    base = ["--dataset=tiny", f"--data_path={tiny_data}"]
    assert main(base + [f"--feature_dir={tmp_path / 'one'}"]) == 0
    assert main(base + [f"--feature_dir={tmp_path / 'ray'}", "--ray", "--num_workers=2", "--llm_ray_block_size=8"]) == 0
    out = capsys.readouterr().out
    name = out.strip().splitlines()[-1].split()[2]
    one_tokens, one, one_meta = load_features(str(tmp_path / "one" / f"tiny.{name}"), mmap=False)
    ray_tokens, on_ray, ray_meta = load_features(str(tmp_path / "ray" / f"tiny.{name}"), mmap=False)
    assert list(ray_tokens) == list(one_tokens) and on_ray.shape == one.shape == (30, 384)
    assert np.abs(on_ray - one).max() < 1e-5 and ray_meta["cache_key"] == one_meta["cache_key"]
    config = Config(model="SASRec", dataset="tiny", config_dict=tiny_config(tiny_data, tmp_path, llm_features=[name],
                                                                          feature_dir=str(tmp_path / "ray")))
    dataset = create_dataset(config)
    row = dataset.token2id("item_id", "i3")
    assert np.allclose(dataset.llm_feature(name)[row].numpy(), on_ray[list(ray_tokens).index("i3")])


def test_ray_extraction_resumes_after_the_last_finished_chunk(tmp_path, local_ray, monkeypatch):
    import numpy as np
    import ray.data

    from recbole_llm.llm.embed import resolve_llm_path
    from recbole_llm.llm.ray_extract import embed_texts_ray

    texts = [f"item number {i} " + "word " * (i % 7) for i in range(15)]
    kwargs = {"num_workers": 1, "block_size": 4, "chunk_dir": str(tmp_path / "chunks"), "chunk_key": "k", "chunk_size": 10,
              "show_progress": False}
    first = embed_texts_ray(texts, resolve_llm_path("minilm"), 384, **kwargs)
    assert sorted(os.listdir(tmp_path / "chunks")) == ["k-ray-0.npy", "k-ray-10.npy"]
    os.remove(tmp_path / "chunks" / "k-ray-10.npy")
    calls = []
    original = ray.data.from_items
    monkeypatch.setattr(ray.data, "from_items", lambda items, **kw: calls.append(len(items)) or original(items, **kw))
    again = embed_texts_ray(texts, resolve_llm_path("minilm"), 384, **kwargs)
    assert calls == [5]  # only the missing last chunk (rows 10-14) went to Ray
    assert np.abs(again - first).max() < 1e-5  # other blocks, other padding: equal to float rounding


def test_two_machines_as_documented(tmp_path):
    """docs/distributed.md's several-machine command, both "machines" on this host (only the address differs)."""
    import subprocess
    import sys

    from tests.conftest import ROOT

    data = write_tiny_dataset(str(tmp_path / "data"))
    port = free_port()
    common = [sys.executable, os.path.join(ROOT, "run_recbole_llm.py"), "--model=SASRec", "--dataset=tiny", f"--data_path={data}",
              "--epochs=1", "--nproc=1", "--world_size=2", "--ip=localhost", f"--port={port}", f"--checkpoint_dir={tmp_path / 's'}",
              "--state=WARNING", "--show_progress=False", "--hidden_size=16", "--inner_size=32", "--n_layers=1", "--n_heads=1"]
    machines = [subprocess.Popen(common + [f"--offset={offset}"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
                for offset in (0, 1)]
    outputs = [m.communicate(timeout=300) for m in machines]
    assert [m.returncode for m in machines] == [0, 0], [err[-1500:] for _, err in outputs]
    assert "test result: {" in outputs[0][0]
    assert "the results are printed by the machine with offset 0" in outputs[1][0]


@pytest.mark.parametrize("model, extra", [
    ("BERT4Rec", {}),
    ("LEARN", {"d_model": 16, "embedding_dim": 16, "n_heads": 1}),
    ("SASRec", {"cold_item_ratio": 0.2, "loss_type": "SSM", "ssm_negatives": 8}),
])
def test_other_models_and_protocols_under_ddp(odd_data, tmp_path, monkeypatch, model, extra):
    """Two processes started in a fresh folder (RecBole's log folders did not exist: it used to race creating them)."""
    from recbole_llm import run_recbole_llm
    from recbole_llm.quick_start import evaluate_model_file

    monkeypatch.chdir(tmp_path)
    config = tiny_config(odd_data, tmp_path, nproc=2, port=free_port(), feature_dir=str(tmp_path / "f"), **extra)
    result = run_recbole_llm(model=model, dataset="tiny", config_dict=config)
    assert dict(evaluate_model_file(result["model_file"])) == dict(result["test_result"])
