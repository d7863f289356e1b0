"""Dataloader construction: RecBole's, plus the plugin's ``train_mode: all_positions``.

``train_mode: prefix`` (default) is RecBole's prefix augmentation: one training row per prefix of every
user's sequence, loss at its last position. ``train_mode: all_positions`` keeps one row per user (its
longest training prefix, i.e. the whole training sequence up to MAX_ITEM_LIST_LENGTH) and adds the field
``<item_id>_target_list``: the next item at every position, so the model takes the loss at all positions
in one pass (the original SASRec and the official LLMEmb code). Validation and test are RecBole's.

``train_user_inter_num_interval`` (RecBole's interval syntax, e.g. ``"[5,40]"``) keeps the training rows of the
users whose training sequence has that many items (the public LEARN finetune trains on [5,40]); validation and
test keep every user, and long-tail popularity keeps counting every training interaction.

The loaders are built from the dataset every time (:func:`split_loaders`): RecBole's ``data_preparation`` first
unpickles ``<checkpoint_dir>/<dataset>-for-<model>-dataloader.pth`` (or ``dataloaders_save_path``) whenever that
file exists, whatever ``save_dataloaders`` says, so a results folder someone hands over would run code on resume.
The plugin never calls it; ``save_dataloaders`` and ``dataloaders_save_path`` are refused (recbole_llm.config).
"""

import numpy as np
import torch
from recbole.data.interaction import Interaction
from recbole.data.utils import create_samplers, get_dataloader
from recbole.utils import FeatureSource, FeatureType, ModelType, set_color

TARGET_LIST_SUFFIX = "_target_list"


def longest_rows(train_dataset):
    """Row indices of each user's longest training row (ties: the latest row): its whole training sequence."""
    inter = train_dataset.inter_feat
    users = inter[train_dataset.uid_field].numpy()
    lengths = inter[train_dataset.item_list_length_field].numpy()
    order = np.lexsort((np.arange(len(users)), lengths, users))
    last_of_user = np.ones(len(users), dtype=bool)
    last_of_user[:-1] = users[order][1:] != users[order][:-1]
    return torch.from_numpy(order[last_of_user])


def all_positions_dataset(train_dataset):
    """A copy of a prefix-augmented train split with one row per user and a next-item target list."""
    iid_field = train_dataset.iid_field
    list_field, len_field = train_dataset.item_id_list_field, train_dataset.item_list_length_field
    picked = train_dataset.inter_feat[longest_rows(train_dataset)]
    seq, seq_len, target = picked[list_field], picked[len_field].long(), picked[iid_field]
    targets = torch.zeros_like(seq)
    targets[:, :-1] = seq[:, 1:]
    targets[torch.arange(len(seq)), (seq_len - 1).clamp(min=0)] = target
    target_field = iid_field + TARGET_LIST_SUFFIX
    picked.update(Interaction({target_field: targets}))
    train_dataset.set_field_property(target_field, FeatureType.TOKEN_SEQ, FeatureSource.INTERACTION, seq.size(1))
    new = train_dataset.copy(picked)
    # long-tail popularity keeps counting every training interaction (also those of users filtered out)
    new.statistics_source = getattr(train_dataset, "statistics_source", train_dataset)
    return new


def filter_training_users(train_dataset, interval):
    """A copy of a prefix-augmented train split with the rows of the users whose training length lies in
    ``interval`` (a RecBole interval string, validated by recbole_llm.config). A user with n training items has
    n - 1 rows (the first item is never a target)."""
    intervals = train_dataset._parse_intervals_str(interval)
    users = train_dataset.inter_feat[train_dataset.uid_field].long()
    rows = torch.bincount(users, minlength=train_dataset.user_num)
    lengths = torch.where(rows > 0, rows + 1, torch.zeros_like(rows))
    keep_user = torch.tensor([n > 0 and train_dataset._within_intervals(n, intervals) for n in lengths.tolist()])
    if not bool(keep_user.any()):
        from recbole_llm.errors import ConfigError

        raise ConfigError(
            f"config key 'train_user_inter_num_interval' is {interval!r}: no user's training sequence has a length in it "
            f"(lengths {int(lengths[lengths > 0].min())}..{int(lengths.max())}): widen it"
        )
    new = train_dataset.copy(train_dataset.inter_feat[keep_user[users]])
    new.statistics_source = getattr(train_dataset, "statistics_source", train_dataset)
    return new


def split_loaders(config, dataset):
    """RecBole's ``data_preparation`` without its dataloader cache: split ``dataset`` and build the train, valid and
    test loaders (the same classes, samplers and order as RecBole's), never reading or writing a pickled file."""
    from logging import getLogger

    from recbole.sampler import KGSampler

    built = dataset.build()
    train_dataset, valid_dataset, test_dataset = built
    train_sampler, valid_sampler, test_sampler = create_samplers(config, dataset, built)
    if config["MODEL_TYPE"] != ModelType.KNOWLEDGE:
        train_data = get_dataloader(config, "train")(config, train_dataset, train_sampler, shuffle=config["shuffle"])
    else:
        neg = config["train_neg_sample_args"]
        kg_sampler = KGSampler(dataset, neg["distribution"], neg["alpha"])
        train_data = get_dataloader(config, "train")(config, train_dataset, train_sampler, kg_sampler, shuffle=True)
    valid_data = get_dataloader(config, "valid")(config, valid_dataset, valid_sampler, shuffle=False)
    test_data = get_dataloader(config, "test")(config, test_dataset, test_sampler, shuffle=False)
    logger = getLogger()
    logger.info(set_color("[Training]: ", "pink") + set_color("train_batch_size", "cyan") + " = "
                + set_color(f'[{config["train_batch_size"]}]', "yellow") + set_color(" train_neg_sample_args", "cyan")
                + ": " + set_color(f'[{config["train_neg_sample_args"]}]', "yellow"))
    logger.info(set_color("[Evaluation]: ", "pink") + set_color("eval_batch_size", "cyan") + " = "
                + set_color(f'[{config["eval_batch_size"]}]', "yellow") + set_color(" eval_args", "cyan") + ": "
                + set_color(f'[{config["eval_args"]}]', "yellow"))
    return train_data, valid_data, test_data


def data_preparation(config, dataset):
    """The split's loaders (:func:`split_loaders`); with ``train_mode: all_positions`` the train loader yields one row
    per user."""
    train_data, valid_data, test_data = split_loaders(config, dataset)
    interval = config["train_user_inter_num_interval"]
    all_positions = config["train_mode"] == "all_positions"  # a model without the key trains RecBole's way (prefix)
    if all_positions or interval is not None:
        train_dataset = train_data._dataset
        if interval is not None:
            train_dataset = filter_training_users(train_dataset, interval)
        if all_positions:
            train_dataset = all_positions_dataset(train_dataset)
        train_sampler = train_data._sampler
        train_data = get_dataloader(config, "train")(config, train_dataset, train_sampler, shuffle=config["shuffle"])
    return train_data, valid_data, test_data


def user_sequences(train_dataset):
    """(seqs, lengths) of shape (n_users, L) and (n_users,): every user's whole training sequence, left-aligned,
    indexed by internal user id (users without training rows get length 0).

    Read from the longest row of each user (prefix rows or the one row of ``all_positions``): its input plus
    its target; when that exceeds MAX_ITEM_LIST_LENGTH the oldest item drops out, as in BERT4Rec's cloze rows.
    """
    picked = train_dataset.inter_feat[longest_rows(train_dataset)]
    list_field, len_field = train_dataset.item_id_list_field, train_dataset.item_list_length_field
    seq, seq_len, target = picked[list_field], picked[len_field].long(), picked[train_dataset.iid_field]
    max_len = seq.size(1)
    whole = torch.nn.functional.pad(seq, (0, 1)).scatter(1, seq_len.view(-1, 1), target.view(-1, 1))
    whole = torch.where((seq_len >= max_len).unsqueeze(1), whole[:, 1:], whole[:, :-1])
    n_users = train_dataset.user_num
    seqs = torch.zeros(n_users, max_len, dtype=torch.long)
    lens = torch.zeros(n_users, dtype=torch.long)
    uids = picked[train_dataset.uid_field].long()
    seqs[uids] = whole.long()
    lens[uids] = (seq_len + 1).clamp(max=max_len)
    return seqs, lens
