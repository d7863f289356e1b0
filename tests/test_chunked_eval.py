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


@pytest.mark.parametrize("model_name", ["SASRec", "LLMEmbSASRec", "LLMESRSASRec", "LEARN", "GRU4Rec"])
def test_sampled_scores_equal_predict(tiny_data, tmp_path, model_name, monkeypatch):
    """uni100 with one encoding per user gives the scores of RecBole's per-candidate ``predict`` (GRU4Rec: RecBole's path)."""
    from conftest import rand_features_config

    from recbole_llm import Config, create_dataset, get_model
    from recbole_llm.quick_start import prepare_artifacts
    from recbole_llm.trainer import trainer as plugin_trainer
    from recbole_llm.utils import data_preparation, get_trainer

    overrides = {"eval_args": {"mode": "uni100"}, "teacher_epochs": 1, "llmesr_alpha": 0.0, "hidden_size": 12}
    config = Config(model=model_name, dataset="tiny", config_dict=rand_features_config(tiny_data, tmp_path, **overrides))
    prepare_artifacts(config)
    dataset = create_dataset(config)
    train, valid, test = data_preparation(config, dataset)
    model = get_model(model_name)(config, train.dataset).eval()
    trainer = get_trainer(config["MODEL_TYPE"], config["model"])(config, model)
    assert plugin_trainer.scores_from_factors(model) is (model_name != "GRU4Rec")
    trainer.tot_item_num = dataset.item_num  # set by evaluate()
    batches = list(test)  # the negatives are drawn anew on every pass: compare on the same batches
    with torch.no_grad():
        fast = [trainer._neg_sample_batch_eval(batch) for batch in batches]
        calls, predict = [], model.predict
        model.predict = lambda interaction: calls.append(len(interaction)) or predict(interaction)
        monkeypatch.setattr(plugin_trainer, "scores_from_factors", lambda model: False)
        slow = [trainer._neg_sample_batch_eval(batch) for batch in batches]
    assert sum(calls) == sum(len(batch[0]) for batch in batches)  # RecBole's path: one row per candidate
    for (inter_a, scores_a, *_), (inter_b, scores_b, *_) in zip(fast, slow):
        assert torch.equal(inter_a["user_id"], inter_b["user_id"])
        assert torch.equal(torch.isinf(scores_a), torch.isinf(scores_b))
        torch.testing.assert_close(scores_a[~torch.isinf(scores_a)], scores_b[~torch.isinf(scores_b)], rtol=1e-5, atol=1e-5)
