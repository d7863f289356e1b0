"""Plugin datasets. ``<Model>Dataset`` classes here are picked by name (see utils.create_dataset)."""

from logging import getLogger

import recbole.data.dataset as recbole_datasets
from recbole.data.dataset import SequentialDataset

from recbole_llm.data.atomic import AtomicFilesMixin
from recbole_llm.data.cold import ColdItemsMixin, check_sequential
from recbole_llm.llm.features import (FeatureFileError, align_features, feature_dirs, feature_key, find_feature_file, load_features,
                                      mapped_features)


class LLMFeatureDataset(SequentialDataset):
    """A ``SequentialDataset`` with frozen LLM feature tables attached.

    ``llm_features: [name, ...]`` in the config names feature files (see ``recbole_llm.llm.features``);
    each becomes a tensor of shape ``(item_num, d)`` aligned to RecBole's internal item ids
    through ``field2id_token`` (row 0, the padding id, is zeros), held in ``feature_dtype`` (float32, or
    float16 / bfloat16 for half the memory), memory-mapped from an aligned copy with ``feature_mmap: True``. Models read them with :meth:`llm_feature` (float32 unless they
    ask for the stored dtype: the LLMEmb adapter computes in float32 from it). ``llm_feature_dims: {name: d}``
    optionally checks the width.
    """

    def __init__(self, config):
        super().__init__(config)
        self.llm_features = {}
        self.llm_feature_keys = {}  # name -> the file's cache key (what a checkpoint records instead of the table)
        self._load_llm_features()

    def _load_llm_features(self):
        names = self.config["llm_features"] or []
        if isinstance(names, str):
            names = [names]
        expected = self.config["llm_feature_dims"] or {}
        id2token = self.field2id_token[self.iid_field]
        for name in names:
            base = find_feature_file(self.config, name)
            if base is None:
                raise FeatureFileError(
                    f"feature file '{self.dataset_name}.{name}' not found for dataset '{self.dataset_name}' "
                    f"(looked for {self.dataset_name}.{name}.json/.npy in the dataset folder and dataset_atomic/): "
                    f"build it with python -m recbole_llm.features --dataset={self.dataset_name} --name={name}"
                )
            tokens, matrix, meta = load_features(base)
            if self.config["feature_mmap"]:  # a table larger than memory: an aligned copy, mapped from disk
                self.llm_features[name] = mapped_features(base, tokens, matrix, meta, id2token, feature_dirs(self.config)[0],
                                                          expected.get(name), dtype=self.config["feature_dtype"])
            else:
                self.llm_features[name] = align_features(tokens, matrix, id2token, base + ".npy", expected.get(name),
                                                         dtype=self.config["feature_dtype"], stored=meta.get("dtype", "float32"))
            self.llm_feature_keys[name] = feature_key(base, meta)
            getLogger().info(f"attached LLM features '{name}' {tuple(self.llm_features[name].shape)} from {base}.npy")

    def llm_feature_key(self, name=None):
        """The cache key of feature file ``name`` (default: the first of ``llm_features``)."""
        self.llm_feature(name, keep_dtype=True)  # the same errors for a name that is not attached (and no float32 copy)
        return self.llm_feature_keys[name if name is not None else next(iter(self.llm_features))]

    def llm_feature(self, name=None, keep_dtype=False):
        """The aligned feature table ``name`` (default: the first of ``llm_features``), in float32 unless
        ``keep_dtype`` (then in ``feature_dtype``)."""
        if not self.llm_features:
            raise FeatureFileError("this model needs LLM features: set llm_features: [<name>] in the config")
        if name is None:
            name = next(iter(self.llm_features))
        if name not in self.llm_features:
            raise FeatureFileError(f"feature '{name}' is not attached; attached: {list(self.llm_features)}")
        table = self.llm_features[name]
        return table if keep_dtype else table.float()


# ---- the classes create_dataset builds: a RecBole or plugin dataset class with the plugin's mixins in front ----
# One named class per dataset class create_dataset can pick (RecBole 1.2.1's and LLMFeatureDataset): they pickle and
# unpickle by name (RecBole's FDSA and save_dataset pickle datasets). ``Cold...``: with the cold-start protocol.
class ReportedDataset(AtomicFilesMixin, recbole_datasets.Dataset):
    """RecBole's Dataset with the atomic-file checks (recbole_llm.data.atomic)."""


class ReportedSequentialDataset(AtomicFilesMixin, recbole_datasets.SequentialDataset):
    """RecBole's SequentialDataset with the atomic-file checks."""


class ReportedKnowledgeBasedDataset(AtomicFilesMixin, recbole_datasets.KnowledgeBasedDataset):
    """RecBole's KnowledgeBasedDataset with the atomic-file checks."""


class ReportedKGSeqDataset(AtomicFilesMixin, recbole_datasets.KGSeqDataset):
    """RecBole's KGSeqDataset with the atomic-file checks."""


class ReportedDecisionTreeDataset(AtomicFilesMixin, recbole_datasets.DecisionTreeDataset):
    """RecBole's DecisionTreeDataset with the atomic-file checks."""


class ReportedGRU4RecKGDataset(AtomicFilesMixin, recbole_datasets.GRU4RecKGDataset):
    """RecBole's GRU4RecKGDataset with the atomic-file checks."""


class ReportedKSRDataset(AtomicFilesMixin, recbole_datasets.KSRDataset):
    """RecBole's KSRDataset with the atomic-file checks."""


class ReportedDIENDataset(AtomicFilesMixin, recbole_datasets.DIENDataset):
    """RecBole's DIENDataset with the atomic-file checks."""


class ReportedLLMFeatureDataset(AtomicFilesMixin, LLMFeatureDataset):
    """LLMFeatureDataset with the atomic-file checks."""


class ColdReportedSequentialDataset(AtomicFilesMixin, ColdItemsMixin, recbole_datasets.SequentialDataset):
    """RecBole's SequentialDataset with the atomic-file checks and the cold-start protocol (recbole_llm.data.cold)."""


class ColdReportedKGSeqDataset(AtomicFilesMixin, ColdItemsMixin, recbole_datasets.KGSeqDataset):
    """RecBole's KGSeqDataset with the atomic-file checks and the cold-start protocol."""


class ColdReportedGRU4RecKGDataset(AtomicFilesMixin, ColdItemsMixin, recbole_datasets.GRU4RecKGDataset):
    """RecBole's GRU4RecKGDataset with the atomic-file checks and the cold-start protocol."""


class ColdReportedKSRDataset(AtomicFilesMixin, ColdItemsMixin, recbole_datasets.KSRDataset):
    """RecBole's KSRDataset with the atomic-file checks and the cold-start protocol."""


class ColdReportedDIENDataset(AtomicFilesMixin, ColdItemsMixin, recbole_datasets.DIENDataset):
    """RecBole's DIENDataset with the atomic-file checks and the cold-start protocol."""


class ColdReportedLLMFeatureDataset(AtomicFilesMixin, ColdItemsMixin, LLMFeatureDataset):
    """LLMFeatureDataset with the atomic-file checks and the cold-start protocol."""


def plugin_dataset_class(base, cold=False):
    """The named class above that puts :class:`~recbole_llm.data.atomic.AtomicFilesMixin` (and, with ``cold``, the
    cold-start protocol) in front of ``base``."""
    if cold:
        check_sequential(base)
    name = f"{'ColdReported' if cold else 'Reported'}{base.__name__}"
    cls = globals().get(name)
    if not (isinstance(cls, type) and cls.__bases__[-1] is base):
        raise TypeError(f"no plugin dataset class for {base.__name__}: add {name} to recbole_llm/data/dataset.py")
    return cls
