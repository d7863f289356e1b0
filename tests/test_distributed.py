"""RecBole's DDP on CPU (gloo): training with nproc=2 and metrics gathered across ranks (issue 22)."""

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
