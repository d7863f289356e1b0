"""train_user_inter_num_interval: training rows only for users of some training lengths; evaluation keeps everyone."""

import pytest
import torch
from conftest import tiny_config

from recbole_llm import Config
from recbole_llm.errors import ConfigError
from recbole_llm.evaluator.longtail import training_statistics
from recbole_llm.utils import create_dataset, data_preparation


def loaders(tiny_data, tmp_path, **keys):
    config = Config(model="SASRec", dataset="tiny", config_dict=tiny_config(tiny_data, tmp_path, **keys))
    dataset = create_dataset(config)
    return config, dataset, data_preparation(config, dataset)


def train_lengths(dataset):
    """{user: training length} from a prefix split (n - 1 rows for n items)."""
    users = dataset.inter_feat[dataset.uid_field].tolist()
    return {u: users.count(u) + 1 for u in set(users)}


@pytest.mark.parametrize("train_mode", ["prefix", "all_positions"])
def test_only_users_inside_the_interval_train(tiny_data, tmp_path, train_mode):
    _, _, (full_train, _, _) = loaders(tiny_data, tmp_path, train_mode=train_mode)
    whole = getattr(full_train.dataset, "statistics_source", full_train.dataset)
    lengths = train_lengths(whole)
    low, high = sorted(lengths.values())[len(lengths) // 4], sorted(lengths.values())[3 * len(lengths) // 4]
    assert low < high  # the tiny data has users on both sides of the interval
    _, _, (train, valid, test) = loaders(tiny_data, tmp_path, train_mode=train_mode, train_user_inter_num_interval=f"[{low},{high}]")
    kept = set(train.dataset.inter_feat[train.dataset.uid_field].tolist())
    assert kept == {u for u, n in lengths.items() if low <= n <= high}
    if train_mode == "prefix":  # every row of a kept user stays
        assert len(train.dataset) == sum(lengths[u] - 1 for u in kept)
    else:
        assert len(train.dataset) == len(kept)
    # validation and test keep every user; popularity still counts the users filtered out of training
    _, _, (_, _, test_all) = loaders(tiny_data, tmp_path, train_mode=train_mode)
    assert torch.equal(test.dataset.inter_feat[test.dataset.uid_field], test_all.dataset.inter_feat[test_all.dataset.uid_field])
    for ours, theirs in zip(training_statistics(train.dataset), training_statistics(full_train.dataset)):
        assert torch.equal(ours, theirs)


def test_open_interval_and_list_form(tiny_data, tmp_path):
    _, _, (train, _, _) = loaders(tiny_data, tmp_path, train_user_inter_num_interval="(1,inf)")
    _, _, (everyone, _, _) = loaders(tiny_data, tmp_path)
    assert len(train.dataset) == len(everyone.dataset)
    config, _, (as_list, _, _) = loaders(tiny_data, tmp_path, train_user_inter_num_interval=[2, 4])
    assert config["train_user_inter_num_interval"] == "[2,4]"
    assert set(train_lengths(as_list.dataset).values()) <= {2, 3, 4}
    config, _, (as_tuple, _, _) = loaders(tiny_data, tmp_path, train_user_inter_num_interval="(2,4)")  # RecBole: a tuple
    assert config["train_user_inter_num_interval"] == "(2,4)"
    assert set(train_lengths(as_tuple.dataset).values()) == {3}


@pytest.mark.parametrize("bad", ["[40,5]", "[5;40]", "[a,b]", "5-40", 5, [1, 2, 3]])
def test_bad_interval_is_one_line(tiny_data, tmp_path, bad):
    with pytest.raises(ConfigError, match="train_user_inter_num_interval"):
        Config(model="SASRec", dataset="tiny", config_dict=tiny_config(tiny_data, tmp_path, train_user_inter_num_interval=bad))


def test_interval_without_users_names_the_lengths(tiny_data, tmp_path):
    with pytest.raises(ConfigError, match=r"no user's training sequence has a length in it .*widen it"):
        loaders(tiny_data, tmp_path, train_user_inter_num_interval="[1000,2000]")
