"""eval_ties: how a target whose score equals another item's exactly is ranked (the official LEARN code: target first)."""

import pytest
import torch
from conftest import tiny_config

from recbole_llm import Config, get_model, get_trainer
from recbole_llm.errors import ConfigError
from recbole_llm.trainer.trainer import break_ties, chunked_topk
from recbole_llm.utils import create_dataset, data_preparation


def rank_of_target(scores, row, item, rule):
    scores = break_ties(scores.clone(), torch.tensor([row]), torch.tensor([item]), rule)
    order = scores[row].argsort(descending=True, stable=True)
    return int((order == item).nonzero())


def test_break_ties_moves_the_target_past_exact_ties_only():
    scores = torch.tensor([[float("-inf"), 0.9, 0.5, 0.5, 0.5, 0.1]])
    # target item 4 ties with items 2 and 3; item 1 is strictly higher and stays ahead
    assert rank_of_target(scores, 0, 4, "optimistic") == 1
    assert rank_of_target(scores, 0, 4, "pessimistic") == 3
    assert rank_of_target(scores, 0, 4, "arbitrary") == 3  # stable sort: by column
    assert rank_of_target(scores, 0, 2, "pessimistic") == 3
    masked = break_ties(scores.clone(), torch.tensor([0]), torch.tensor([0]), "optimistic")
    assert masked[0, 0] == float("-inf")  # a masked target stays masked


def test_chunked_topk_applies_the_rule_in_every_chunk():
    users, items = torch.ones(2, 3), torch.ones(12, 3)  # every item ties
    positives = (torch.tensor([0, 1]), torch.tensor([9, 11]))
    for chunk in (1, 5, 12):
        first = chunked_topk(users, items, 3, chunk, positives=(*positives, "optimistic")).indices[:, 0]
        assert first.tolist() == [9, 11]
        assert 9 not in chunked_topk(users, items, 3, chunk, positives=(*positives, "pessimistic")).indices[0].tolist()


@pytest.mark.parametrize("chunk", [None, 7])
@pytest.mark.parametrize("mode", ["full", "uni100"])
def test_every_score_tied_gives_perfect_or_no_hits(tiny_data, tmp_path, chunk, mode):
    """A model that scores every item 0: optimistic puts each target first, pessimistic last."""
    results = {}
    for rule in ("optimistic", "pessimistic"):
        config = Config(model="SASRec", dataset="tiny", config_dict=tiny_config(
            tiny_data, tmp_path, eval_ties=rule, eval_item_chunk=chunk, eval_args={"mode": mode}))
        dataset = create_dataset(config)
        train, _, test = data_preparation(config, dataset)
        model = get_model("SASRec")(config, train.dataset)
        with torch.no_grad():
            for parameter in model.parameters():
                parameter.zero_()
        trainer = get_trainer(config["MODEL_TYPE"], "SASRec")(config, model)
        trainer.eval_collector.data_collect(train)
        results[rule] = trainer.evaluate(test, load_best_model=False)
    assert results["optimistic"]["hit@10"] == 1.0 and results["optimistic"]["ndcg@10"] == 1.0
    assert results["pessimistic"]["hit@10"] < 0.5


def test_unknown_rule_is_one_line(tiny_data, tmp_path):
    with pytest.raises(ConfigError, match="'eval_ties' must be arbitrary, optimistic or pessimistic"):
        Config(model="SASRec", dataset="tiny", config_dict=tiny_config(tiny_data, tmp_path, eval_ties="first"))
