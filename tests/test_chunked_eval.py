"""Chunked full-sort evaluation (eval_item_chunk): the same metrics as scoring every item at once."""

import pytest
import torch

from recbole_llm import run_recbole_llm
from recbole_llm.quick_start import evaluate_model_file
from recbole_llm.trainer.trainer import chunked_topk


def test_chunked_topk_equals_topk_of_the_full_matrix():
    users, items = torch.randn(7, 5), torch.randn(23, 5)
    history = (torch.tensor([0, 0, 3]), torch.tensor([4, 17, 9]))
    full = users @ items.t()
    full[:, 0] = float("-inf")
    full[history] = float("-inf")
    top = full.topk(6, dim=1)
    for chunk in (1, 4, 10, 23, 100):
        result = chunked_topk(users, items, 6, chunk, history)
        torch.testing.assert_close(result.values, top.values)
        assert torch.equal(result.indices, top.indices) and result.shape == (7, 23)


def test_chunked_topk_breaks_ties_by_item_id_whatever_the_chunk():
    users, items = torch.ones(2, 3), torch.ones(12, 3)  # every item ties
    for chunk in (1, 5, 12):
        assert chunked_topk(users, items, 4, chunk).indices.tolist() == [[1, 2, 3, 4]] * 2


@pytest.mark.parametrize("model", ["SASRec"])
def test_chunked_evaluation_gives_the_same_metrics_on_ml100k(tmp_path, model):
    config = {"epochs": 1, "state": "WARNING", "show_progress": False, "checkpoint_dir": str(tmp_path), "train_batch_size": 128,
              "train_mode": "all_positions",
              "feature_dir": str(tmp_path / "f")}
    result = run_recbole_llm(model=model, dataset="ml-100k", config_dict=config)
    whole = evaluate_model_file(result["model_file"])
    chunked = evaluate_model_file(result["model_file"], {"eval_item_chunk": 97})
    assert dict(chunked) == dict(whole)
    assert whole["ndcg@10"] > 0
