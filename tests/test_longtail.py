"""Long-tail grouped metrics against hand-computed values."""

import math

import pytest
import torch
from recbole_llm.compat import numpy_compatibility_settings
from recbole.evaluator.collector import DataStruct

from recbole_llm.evaluator.longtail import (
    COLD_KEY,
    GROUPED_METRICS,
    ITEM_POP_KEY,
    TARGET_KEY,
    USER_KEY,
    USER_LEN_KEY,
    head_mask,
    short_mask,
    tail_mask,
)


# RecBole's metrics use np.float; the plugin's Config restores that alias whenever it is built. These tests
# call the metrics without a Config, so apply the same (numpy-2-safe) compatibility step here.
numpy_compatibility_settings()


def make_config(**overrides):
    config = {"topk": [1, 3], "metric_decimal_place": 4, "tail_threshold": 3, "tail_ratio": 0.8, "short_history_threshold": 4}
    config.update(overrides)
    return config


def make_struct():
    """4 eval rows, top-3 lists. Items 1..5 with training popularity [_, 5, 4, 2, 1, 0] -> tail (<3): 3, 4, 5.

    row  user  target  rank of target   hist len of user
    0    1     1       1                10 (long)
    1    2     3       3                2  (short)
    2    3     4       miss             2  (short)
    3    4     2       2                7  (long)
    """
    struct = DataStruct()
    topk = torch.tensor(
        [
            [1, 0, 0, 1],
            [0, 0, 1, 1],
            [0, 0, 0, 1],
            [0, 1, 0, 1],
        ]
    )
    struct.set("rec.topk", topk)
    struct.set(TARGET_KEY, torch.tensor([1, 3, 4, 2]))
    struct.set(USER_KEY, torch.tensor([1, 2, 3, 4]))
    struct.set(ITEM_POP_KEY, torch.tensor([0, 5, 4, 2, 1, 0]))
    struct.set(USER_LEN_KEY, torch.tensor([0, 10, 2, 2, 7]))
    return struct


def compute(name, config=None):
    metric = GROUPED_METRICS[name](config or make_config())
    return metric.calculate_metric(make_struct())


def test_head_tail_by_target_popularity():
    # head rows: 0 (rank 1), 3 (rank 2); tail rows: 1 (rank 3), 2 (miss)
    assert compute("hit_head") == {"hit_head@1": 0.5, "hit_head@3": 1.0}
    assert compute("hit_tail") == {"hit_tail@1": 0.0, "hit_tail@3": 0.5}
    ndcg_head_3 = (1.0 + 1.0 / math.log2(3)) / 2
    ndcg_tail_3 = (1.0 / math.log2(4) + 0.0) / 2
    assert compute("ndcg_head") == {"ndcg_head@1": 0.5, "ndcg_head@3": round(ndcg_head_3, 4)}
    assert compute("ndcg_tail") == {"ndcg_tail@1": 0.0, "ndcg_tail@3": round(ndcg_tail_3, 4)}
    assert compute("recall_tail") == {"recall_tail@1": 0.0, "recall_tail@3": 0.5}


def test_short_long_by_user_history():
    # short users (len < 4): rows 1, 2; long: rows 0, 3
    assert compute("hit_short") == {"hit_short@1": 0.0, "hit_short@3": 0.5}
    assert compute("hit_long") == {"hit_long@1": 0.5, "hit_long@3": 1.0}
    assert compute("ndcg_long")["ndcg_long@3"] == round((1.0 + 1.0 / math.log2(3)) / 2, 4)


def test_tail_ratio_and_empty_group():
    # ratio 0.4 of 5 items -> the 2 least popular: items 5 (0) and 4 (1): only row 2 (a miss) is tail
    config = make_config(tail_threshold=None, tail_ratio=0.4)
    assert tail_mask(torch.tensor([0, 5, 4, 2, 1, 0]), config).tolist() == [False, False, False, False, True, True]
    assert compute("hit_tail", config) == {"hit_tail@1": 0.0, "hit_tail@3": 0.0}
    assert compute("hit_head", config)["hit_head@3"] == 1.0
    # threshold 1: only item 5 is tail, no eval row targets it -> the empty group is not reported (not 0.0)
    assert compute("ndcg_tail", make_config(tail_threshold=1)) == {}
    assert compute("ndcg_head", make_config(tail_threshold=1))["ndcg_head@3"] > 0


def test_cold_warm_by_target_item():
    # cold items 3 and 2: rows 1 (target 3, rank 3) and 3 (target 2, rank 2) are cold; rows 0 (rank 1), 2 (miss) warm
    struct = make_struct()
    struct.set(COLD_KEY, torch.tensor([False, False, True, True, False, False]))
    cold = GROUPED_METRICS["ndcg_cold"](make_config()).calculate_metric(struct)
    assert cold == {"ndcg_cold@1": 0.0, "ndcg_cold@3": round((1 / math.log2(4) + 1 / math.log2(3)) / 2, 4), "targets_cold": 2}
    warm = GROUPED_METRICS["hit_warm"](make_config()).calculate_metric(struct)
    assert warm == {"hit_warm@1": 0.5, "hit_warm@3": 0.5, "targets_warm": 2}
    assert GROUPED_METRICS["recall_cold"](make_config()).calculate_metric(struct)["recall_cold@3"] == 1.0


def test_cold_items_leave_the_tail_quota_and_both_popularity_groups():
    """Under the cold-start protocol the tail quota is a share of the warm items; cold items are neither head nor tail."""
    pop = torch.tensor([0, 9, 8, 7, 6, 5, 4, 3, 2, 0, 0])  # items 9 and 10: cold (popularity 0 in training)
    cold = torch.zeros(11, dtype=torch.bool)
    cold[[9, 10]] = True
    config = make_config(tail_threshold=None, tail_ratio=0.5)
    # counted among all 10 items, the two cold items take 2 of the 5 places: 3 of the 8 warm items are tail
    assert tail_mask(pop, config).nonzero().view(-1).tolist() == [6, 7, 8, 9, 10]
    # over the 8 warm items: 4 tail (item 5 moves from head to tail), the cold items in neither group
    assert tail_mask(pop, config, cold).nonzero().view(-1).tolist() == [5, 6, 7, 8]
    assert head_mask(pop, config, cold).nonzero().view(-1).tolist() == [1, 2, 3, 4]
    assert tail_mask(pop, make_config(tail_threshold=5), cold).nonzero().view(-1).tolist() == [6, 7, 8]  # a threshold too
    # the rows: item 2 cold (row 3's target): row 3 leaves head (head is row 0 only), tail keeps rows 1 and 2
    struct = make_struct()
    struct.set(COLD_KEY, torch.tensor([False, False, True, False, False, False]))
    assert GROUPED_METRICS["hit_head"](make_config()).calculate_metric(struct) == {"hit_head@1": 1.0, "hit_head@3": 1.0}
    assert GROUPED_METRICS["hit_tail"](make_config()).calculate_metric(struct) == {"hit_tail@1": 0.0, "hit_tail@3": 0.5}
    assert compute("hit_head") == {"hit_head@1": 0.5, "hit_head@3": 1.0}  # protocol off: row 3 is head


def test_cold_warm_not_reported_without_the_protocol_or_without_cold_targets():
    assert compute("ndcg_cold") == {} and compute("hit_warm") == {}  # protocol off: no cold set in the struct
    struct = make_struct()
    struct.set(COLD_KEY, torch.tensor([False, False, False, False, False, True]))  # item 5: no row targets it
    assert GROUPED_METRICS["ndcg_cold"](make_config()).calculate_metric(struct) == {}
    assert GROUPED_METRICS["ndcg_warm"](make_config()).calculate_metric(struct)["targets_warm"] == 4


def test_short_threshold_defaults_to_median():
    config = make_config(short_history_threshold=None)
    # median of [10, 2, 2, 7] (torch lower median) = 2 -> nobody is < 2
    assert short_mask(torch.tensor([0, 10, 2, 2, 7]), config).tolist() == [True, False, False, False, False]


def test_bad_tail_ratio():
    with pytest.raises(ValueError, match="tail_ratio"):
        tail_mask(torch.tensor([0, 1, 2]), make_config(tail_threshold=None, tail_ratio=1.5))


def test_grouped_metrics_need_training_statistics():
    struct = make_struct()
    del struct[ITEM_POP_KEY]
    with pytest.raises(RuntimeError, match="data_collect"):
        GROUPED_METRICS["hit_tail"](make_config()).calculate_metric(struct)


def test_metrics_are_registered_with_recbole():
    from recbole.evaluator.register import metric_information, metrics_dict

    for name in ("hit_tail", "ndcg_head", "recall_short", "ndcg_long", "ndcg_cold", "recall_warm"):
        assert name in metrics_dict and name in metric_information


def test_training_statistics_counts_distinct_users(tiny_data, tmp_path):
    """Popularity from the train split only (targets of valid/test rows excluded), distinct users."""
    from conftest import tiny_config
    from recbole_llm import Config, create_dataset
    from recbole_llm.evaluator import training_statistics
    from recbole_llm.utils import data_preparation

    config = Config(model="SASRec", dataset="tiny", config_dict=tiny_config(tiny_data, tmp_path))
    dataset = create_dataset(config)
    train, valid, test = data_preparation(config, dataset)
    item_pop, user_len = training_statistics(train.dataset)

    # expected from the raw file: each user's sequence minus its last two items
    import pandas as pd

    raw = pd.read_csv(f"{tiny_data}/tiny/tiny.inter", sep="\t")
    expected_pop, expected_len = {}, {}
    for user, rows in raw.groupby("user_id:token", sort=False):
        items = rows.sort_values("timestamp:float")["item_id:token"].tolist()[:-2]
        expected_len[user] = len(set(items))
        for item in set(items):
            expected_pop[item] = expected_pop.get(item, 0) + 1
    token2id = dataset.field2token_id["item_id"]
    for item, count in expected_pop.items():
        assert int(item_pop[token2id[item]]) == count
    assert int(item_pop.sum()) == sum(expected_pop.values())
    user2id = dataset.field2token_id["user_id"]
    for user, length in expected_len.items():
        assert int(user_len[user2id[user]]) == length
    assert int(item_pop[0]) == 0 and int(user_len[0]) == 0  # the padding id counts nothing


def test_a_missing_group_is_drawn_as_n_a_not_as_a_zero_bar(tmp_path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from recbole_llm.reporting import grouped_bars, grouped_bars_figure

    rows = [{"model": "A", "ndcg_warm@10_mean": 0.06, "ndcg_warm@10_std": 0.01, "ndcg_cold@10_mean": 0.03, "ndcg_cold@10_std": None},
            {"model": "B", "ndcg_warm@10_mean": 0.05, "ndcg_warm@10_std": 0.0, "ndcg_cold@10_mean": None, "ndcg_cold@10_std": None}]
    groups = [("ndcg_warm@10", "warm"), ("ndcg_cold@10", "cold")]
    fig = grouped_bars_figure(rows, groups, "t")
    ax = fig.axes[0]
    bars = sorted((round(p.get_x() + p.get_width() / 2, 2), round(p.get_height(), 4)) for p in ax.patches)
    assert bars == [(-0.2, 0.06), (0.2, 0.03), (0.8, 0.05)]  # no bar for B's cold group, of 0 or any height
    assert [(t.get_text(), round(t.get_position()[0], 2)) for t in ax.texts] == [("n/a", 1.2)]
    assert [t.get_text() for t in ax.get_legend().get_texts()] == ["warm", "cold"]
    plt.close(fig)
    rows[0]["ndcg_cold@10_mean"] = None  # a group no model has: still in the legend, n/a everywhere
    assert grouped_bars(rows, groups, "t", str(tmp_path / "bars.png")) == str(tmp_path / "bars.png")
    assert (tmp_path / "bars.png").stat().st_size > 0
