"""Trainer pieces shared by every model the plugin runs (RecBole's own and the plugin's).

``with_plugin_trainer(cls)`` returns ``cls`` with :class:`PluginTrainerMixin` in front. The mixin:
  * loads the best checkpoint this run wrote with ``weights_only=False`` (torch>=2.6 refuses RecBole's
    pickled Config otherwise), and nothing else that way;
  * names checkpoints uniquely (model, time, process id, random suffix), so that two runs started in
    the same second (parallel trials, benchmarks) never overwrite each other;
  * collects what the long-tail metrics need (LongTailCollector), one interaction row per score row
    also in sampled (uni100) evaluation.
"""

import os
import uuid

import torch
from recbole.utils import get_local_time

from recbole_llm.compat import load_own_checkpoint
from recbole_llm.evaluator.collector import LongTailCollector


class PluginTrainerMixin:
    def __init__(self, config, model):
        super().__init__(config, model)
        name = f"{config['model']}-{get_local_time()}-{os.getpid()}-{uuid.uuid4().hex[:6]}.pth"
        self.saved_model_file = os.path.join(self.checkpoint_dir, name)
        self._own_checkpoints = {self.saved_model_file}
        self.eval_collector = LongTailCollector(config)

    def _save_checkpoint(self, epoch, verbose=True, **kwargs):
        self._own_checkpoints.add(kwargs.get("saved_model_file", self.saved_model_file))
        return super()._save_checkpoint(epoch, verbose=verbose, **kwargs)

    def save_pretrained_model(self, epoch, saved_model_file):
        self._own_checkpoints.add(saved_model_file)
        return super().save_pretrained_model(epoch, saved_model_file)

    @torch.no_grad()
    def evaluate(self, eval_data, load_best_model=True, model_file=None, show_progress=False):
        if not eval_data:
            return
        if load_best_model:
            checkpoint_file = model_file or self.saved_model_file
            checkpoint = load_own_checkpoint(checkpoint_file, self._own_checkpoints, self.device)
            self.model.load_state_dict(checkpoint["state_dict"])
            self.model.load_other_parameter(checkpoint.get("other_parameter"))
            self.logger.info(f"Loading model structure and parameters from {checkpoint_file}")
        return super().evaluate(eval_data, load_best_model=False, show_progress=show_progress)

    def _neg_sample_batch_eval(self, batched_data):
        interaction, scores, positive_u, positive_i = super()._neg_sample_batch_eval(batched_data)
        row_idx = batched_data[1]
        if scores.dim() == 2 and len(interaction) != scores.shape[0]:
            # sampled evaluation expands each user into 1 + n negatives rows: keep the first per row
            row_idx = torch.as_tensor(row_idx).long()
            order = torch.arange(len(row_idx))
            first = torch.full((scores.shape[0],), len(row_idx), dtype=torch.long)
            first = first.scatter_reduce(0, row_idx, order, reduce="amin")
            interaction = interaction[first]
        return interaction, scores, positive_u, positive_i


_CACHE = {}


def with_plugin_trainer(trainer_class):
    """``trainer_class`` with :class:`PluginTrainerMixin` in front (cached, idempotent)."""
    if issubclass(trainer_class, PluginTrainerMixin):
        return trainer_class
    if trainer_class not in _CACHE:
        _CACHE[trainer_class] = type(
            trainer_class.__name__, (PluginTrainerMixin, trainer_class), {"__module__": __name__}
        )
    return _CACHE[trainer_class]
