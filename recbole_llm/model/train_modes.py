"""``train_mode`` helpers shared by the plugin's SASRec, GRU4Rec and BERT4Rec.

``prefix`` is RecBole's prefix augmentation (one row per prefix, loss at its last position); ``all_positions``
is one row per user with ``<item_id>_target_list`` (built by :mod:`recbole_llm.data.utils`) and a loss at
every position.
"""

import torch

from recbole_llm.errors import ConfigError
from recbole_llm.data.utils import TARGET_LIST_SUFFIX

TRAIN_MODES = ("prefix", "all_positions")


def check_train_mode(config):
    """The config's train_mode (the plugin's SASRec/GRU4Rec/BERT4Rec YAMLs set it; a RecBole model without the key
    trains RecBole's way, prefix)."""
    mode = config["train_mode"] if config["train_mode"] is not None else "prefix"
    if mode not in TRAIN_MODES:
        raise ConfigError(f"config key 'train_mode' must be 'prefix' or 'all_positions', got '{mode}'")
    return mode


def target_list_field(item_id_field):
    return item_id_field + TARGET_LIST_SUFFIX


def require_target_list(interaction, field):
    """The (B, L) next-item targets of an all_positions batch; a clear error for a prefix batch."""
    if field not in interaction:
        raise KeyError(
            f"train_mode all_positions needs '{field}' in the training batch: build the dataloaders with "
            "recbole_llm.utils.data_preparation"
        )
    return interaction[field]


def valid_positions(item_seq_len, max_len):
    """(B, max_len) bool: position < length, the real positions of left-aligned sequences."""
    positions = torch.arange(max_len, device=item_seq_len.device)
    return positions.unsqueeze(0) < item_seq_len.unsqueeze(1)


def batch_items(interaction, fields, limit):
    """The unique item ids (padding 0 left out) of the batch's ``fields`` that it holds, at most ``limit`` of them
    (a random subset beyond that): the items a per-item auxiliary loss of one step looks at."""
    parts = [interaction[field].reshape(-1) for field in fields if field and field in interaction]
    items = torch.unique(torch.cat(parts))
    items = items[items > 0]
    if len(items) > limit:
        items = items[torch.randperm(len(items), device=items.device)[:limit]]
    return items
