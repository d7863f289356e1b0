"""Frozen tables derived from artifacts (LLM feature tables, the alignment teacher) are not written into checkpoints.

A 1M-item catalogue with 4096-dim features is 8 GB: RecBole would store it in every checkpoint it saves. A module
with :class:`FrozenTablesMixin` registers such a table with :meth:`register_frozen`: the table is a non-persistent
buffer (rebuilt from its artifact when the model is built again, e.g. by ``load_model_file``) and only the artifact's
key (its cache key or file name, a few bytes) is saved. Loading a checkpoint whose key differs from the table the
model was built with is an error naming both; checkpoints written before this (with the table inside) still load.
"""

import torch


def _encode(key):
    return torch.tensor(list(str(key or "").encode("utf-8")), dtype=torch.uint8)


class FrozenTablesMixin:
    def register_frozen(self, name, table, key=None):
        """Buffer ``name`` holding ``table``, left out of the state dict; ``<name>_key`` records ``key`` instead."""
        if "_frozen_tables" not in self.__dict__:
            self._frozen_tables = []
        self._frozen_tables.append(name)
        self.register_buffer(name, table, persistent=False)
        self.register_buffer(f"{name}_key", _encode(key))

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        for name in self.__dict__.get("_frozen_tables", ()):
            legacy = state_dict.pop(prefix + name, None)  # a checkpoint from before: the table itself
            if legacy is not None:
                check_legacy_table(prefix + name, legacy, getattr(self, name))
            own, saved = getattr(self, f"{name}_key"), state_dict.get(f"{prefix}{name}_key")
            if saved is None:
                state_dict[f"{prefix}{name}_key"] = own
            elif own.numel() and saved.numel() and not torch.equal(saved.cpu(), own.cpu()):
                from recbole_llm.errors import DataFileError

                theirs, ours = bytes(saved.tolist()).decode(errors="replace"), bytes(own.tolist()).decode(errors="replace")
                raise DataFileError(f"checkpoint was trained with {prefix}{name} from '{theirs}', this model has '{ours}': "
                                    "rebuild the model with the artifacts it was trained on (same feature file / teacher)")
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)


def check_legacy_table(name, saved, own):
    """A checkpoint written before frozen tables were left out holds its table: it must be the one rebuilt now."""
    same = saved.shape == own.shape and torch.allclose(saved.float(), own.float(), rtol=1e-3, atol=1e-3)
    if not same:
        from recbole_llm.errors import DataFileError

        raise DataFileError(f"checkpoint holds a {name} of shape {tuple(saved.shape)} that differs from the one built now "
                            f"{tuple(own.shape)}: rebuild the model with the feature file it was trained on")
