"""Trainer pieces shared by every model the plugin runs (RecBole's own and the plugin's).

``with_plugin_trainer(cls)`` returns ``cls`` with :class:`PluginTrainerMixin` in front (a class named in this module).
The mixin:
  * loads the best checkpoint this run wrote with ``weights_only=False`` (torch>=2.6 refuses RecBole's
    pickled Config otherwise), and nothing else that way;
  * names checkpoints uniquely (model, time, process id, random suffix), so that two runs started in
    the same second (parallel trials, benchmarks) never overwrite each other;
  * sampled (uni100) evaluation encodes each user once (:meth:`PluginTrainerMixin._sampled_scores`) for models
    whose ``predict`` is a dot product of ``full_sort_factors`` (RecBole: once per candidate, 101 times);
  * collects what the long-tail metrics need (LongTailCollector), one interaction row per score row
    also in sampled (uni100) evaluation;
  * ``eval_item_chunk: N`` scores full-sort evaluation N items at a time and keeps only the running top-k
    (:func:`chunked_topk`), for models with ``full_sort_factors`` (the SASRec family, LEARN): memory is
    eval_batch_size x (N + k) scores instead of eval_batch_size x n_items;
  * under DDP (``nproc`` > 1): the per-row evaluation data of all ranks is gathered before the metrics are
    computed (LongTailCollector), so every rank gets the exact single-process metrics (RecBole averages the
    ranks' metrics weighted by batch count, over a sampler that repeats rows to even the shards out); the best
    checkpoint is loaded by global rank 0 and its weights broadcast.
"""

import os
import uuid

import recbole.trainer as recbole_trainers
import torch
from recbole.utils import EvaluatorType, get_local_time, set_color

from recbole_llm.compat import distributed_world, load_own_checkpoint
from recbole_llm.evaluator.collector import LongTailCollector, TopKScores
from recbole_llm.trainer.s3rec_trainer import S3RecTrainer as PluginS3RecTrainer


class PluginTrainerMixin:
    def __init__(self, config, model):
        super().__init__(config, model)
        name = f"{config['model']}-{get_local_time()}-{os.getpid()}-{uuid.uuid4().hex[:6]}.pth"
        self.saved_model_file = os.path.join(self.checkpoint_dir, name)
        self._own_checkpoints = {self.saved_model_file}
        self.eval_collector = LongTailCollector(config)

    def _save_checkpoint(self, epoch, verbose=True, **kwargs):
        """RecBole's checkpoint, written to a temp file and renamed: a stop mid-write leaves the previous best whole."""
        final = kwargs.pop("saved_model_file", self.saved_model_file)
        self._own_checkpoints.add(final)
        tmp = f"{final}.tmp-{os.getpid()}"
        try:
            super()._save_checkpoint(epoch, verbose=False, saved_model_file=tmp, **kwargs)
            if os.path.exists(tmp):  # not on the other DDP ranks (RecBole saves on rank 0 only)
                os.replace(tmp, final)
                if verbose:
                    self.logger.info(set_color("Saving current", "blue") + f": {final}")
        finally:
            if os.path.exists(tmp):
                os.remove(tmp)

    def save_pretrained_model(self, epoch, saved_model_file):
        self._own_checkpoints.add(saved_model_file)
        return super().save_pretrained_model(epoch, saved_model_file)

    @torch.no_grad()
    def evaluate(self, eval_data, load_best_model=True, model_file=None, show_progress=False):
        if not eval_data:
            return
        rank, world = distributed_world()
        if load_best_model and rank == 0:
            checkpoint_file = model_file or self.saved_model_file
            checkpoint = load_own_checkpoint(checkpoint_file, self._own_checkpoints, self.device)
            self.model.load_state_dict(checkpoint["state_dict"])
            self.model.load_other_parameter(checkpoint.get("other_parameter"))
            self.logger.info(f"Loading model structure and parameters from {checkpoint_file}")
        if load_best_model and world > 1:  # the other ranks take rank 0's weights (no shared checkpoint folder needed)
            for tensor in self.model.state_dict().values():
                torch.distributed.broadcast(tensor, src=0)
        self.eval_collector.eval_rows = getattr(eval_data, "sample_size", None)
        return super().evaluate(eval_data, load_best_model=False, show_progress=show_progress)

    def _map_reduce(self, result, num_sample):
        """DDP: the metrics are already global (LongTailCollector gathered every rank's rows first)."""
        return result

    def _full_sort_batch_eval(self, batched_data):
        chunk = self.config["eval_item_chunk"]
        ties = self.config["eval_ties"] or "arbitrary"
        if not chunk or not hasattr(self.model, "full_sort_factors"):
            interaction, scores, positive_u, positive_i = super()._full_sort_batch_eval(batched_data)
            return interaction, break_ties(scores, positive_u, positive_i, ties), positive_u, positive_i
        interaction, history_index, positive_u, positive_i = batched_data
        users, items = self.model.full_sort_factors(interaction.to(self.device))
        topk = chunked_topk(users, items, max(self.config["topk"]), int(chunk), history_index, (positive_u, positive_i, ties))
        return interaction, topk, positive_u, positive_i

    def _neg_sample_batch_eval(self, batched_data):
        interaction, row_idx, positive_u, positive_i = batched_data
        ties = self.config["eval_ties"] or "arbitrary"
        if scores_from_factors(self.model) and self.config["eval_type"] == EvaluatorType.RANKING:
            first = first_row_of_each(row_idx, int(positive_u[-1]) + 1)
            scores = self._sampled_scores(interaction, row_idx, first)
            return interaction[first], break_ties(scores, positive_u, positive_i, ties), positive_u, positive_i
        interaction, scores, positive_u, positive_i = super()._neg_sample_batch_eval(batched_data)
        if scores.dim() == 2 and len(interaction) != scores.shape[0]:
            # sampled evaluation expands each user into 1 + n negatives rows: keep the first per row
            interaction = interaction[first_row_of_each(row_idx, scores.shape[0])]
        if scores.dim() == 2 and self.config["eval_type"] == EvaluatorType.RANKING:
            scores = break_ties(scores, positive_u, positive_i, ties)
        return interaction, scores, positive_u, positive_i

    def _sampled_scores(self, interaction, row_idx, first):
        """Sampled (uni100) scores with one encoding per user: RecBole's ``predict`` repeats the history of every
        candidate row (1 + 100 encodings per user); ``full_sort_factors`` of the user's first row, dotted with the
        candidates' item vectors, gives the same scores (test_sampled_scores_equal_predict)."""
        row_idx = torch.as_tensor(row_idx).long().to(self.device)
        users, items = self.model.full_sort_factors(interaction[first].to(self.device))
        col_idx = interaction[self.config["ITEM_ID_FIELD"]].long().to(self.device)
        scores = torch.full((len(first), self.tot_item_num), float("-inf"), device=self.device)
        scores[row_idx, col_idx] = (users[row_idx] * items[col_idx]).sum(dim=-1)
        return scores


def first_row_of_each(row_idx, n_rows):
    """Index of the first candidate row of each of the ``n_rows`` users of a sampled-evaluation batch."""
    row_idx = torch.as_tensor(row_idx).long().cpu()
    first = torch.full((n_rows,), len(row_idx), dtype=torch.long)
    return first.scatter_reduce(0, row_idx, torch.arange(len(row_idx)), reduce="amin")


def scores_from_factors(model):
    """Whether ``model.predict(row)`` is ``full_sort_factors(row)`` users . items[item]: both defined by one class
    (the plugin's SASRec family, LEARN), not a subclass or an instance that overrides one of them."""
    if {"predict", "full_sort_factors"} & set(vars(model)):
        return False

    def owner(name):
        return next((klass for klass in type(model).__mro__ if name in vars(klass)), None)

    return hasattr(model, "full_sort_factors") and owner("predict") is owner("full_sort_factors")


def break_ties(scores, positive_u, positive_i, rule, offset=0):
    """``eval_ties``: where a target's score equals another item's exactly (items with identical text get identical
    embeddings in content-based models), ``optimistic`` moves the target one float step up, so it ranks before the
    items it ties with (the official LEARN code: rank = the number of items scored strictly higher), ``pessimistic``
    one step down; ``arbitrary`` leaves the order to ``torch.topk`` (RecBole). Masked (-inf) scores stay masked.
    ``offset``: the item id of ``scores``' first column (chunked evaluation). Changes ``scores`` in place."""
    if rule == "arbitrary":
        return scores
    rows, cols = torch.as_tensor(positive_u).long().to(scores.device), torch.as_tensor(positive_i).long().to(scores.device) - offset
    inside = (cols >= 0) & (cols < scores.size(1))
    rows, cols = rows[inside], cols[inside]
    values = scores[rows, cols]
    towards = torch.full_like(values, float("inf") if rule == "optimistic" else float("-inf"))
    scores[rows, cols] = torch.where(torch.isfinite(values), torch.nextafter(values, towards), values)
    return scores


def chunked_topk(users, items, k, chunk, history_index=None, positives=None):
    """TopKScores of ``users @ items.T`` computed ``chunk`` items at a time (at most B x (chunk + k) scores held);
    item 0 (padding) and ``history_index`` (rows, items) are excluded as in RecBole's full-sort evaluation.
    Equal scores are ranked by item id (lower first), whatever the chunk size; ``torch.topk`` over the whole row
    leaves the order of ties unspecified, so with exactly tied scores (e.g. items with identical text) the two can
    differ in NDCG, never in Hit/Recall unless the tie straddles the k-th place. ``positives`` = (rows, items,
    rule) applies :func:`break_ties` to every chunk."""
    n_items = items.size(0)
    best_values = torch.full((users.size(0), 0), float("-inf"), device=users.device, dtype=users.dtype)
    best_index = torch.zeros((users.size(0), 0), dtype=torch.long, device=users.device)
    for start in range(0, n_items, chunk):
        scores = users @ items[start : start + chunk].t()
        if start == 0:
            scores[:, 0] = float("-inf")
        if history_index is not None:
            rows, cols = history_index
            inside = (cols >= start) & (cols < start + scores.size(1))
            scores[rows[inside], cols[inside] - start] = float("-inf")
        if positives is not None:
            break_ties(scores, *positives, offset=start)
        values, index = chunk_candidates(scores, k)
        values = torch.cat([best_values, values], dim=1)
        indices = torch.cat([best_index, index + start], dim=1)  # equal values: increasing item ids
        order = values.sort(dim=1, descending=True, stable=True).indices[:, :k]  # ties: the lower item id first
        best_values, best_index = values.gather(1, order), indices.gather(1, order)
    return TopKScores(best_values, best_index, n_items)


def chunk_candidates(scores, k):
    """(values, column indices), each (B, min(k, C)), of the k best scores of every row of ``scores`` (B, C); among
    scores equal to the k-th best the lowest columns, and the columns in increasing order. ``torch.topk`` finds
    the k-th value; the selection itself does not depend on how topk orders ties."""
    if scores.size(1) <= k:
        index = torch.arange(scores.size(1), device=scores.device).expand_as(scores)
        return scores, index
    kth = scores.topk(k, dim=1).values[:, -1:]
    chosen = scores >= kth
    if (chosen.sum(dim=1) != k).any():  # ties at the k-th value (or NaN scores): the lowest columns among them
        scores = scores.nan_to_num(nan=float("-inf"))
        kth = scores.topk(k, dim=1).values[:, -1:]
        above, tied = scores > kth, scores == kth
        room = k - above.sum(dim=1, keepdim=True)
        chosen = above | (tied & (tied.cumsum(dim=1) <= room))
    index = chosen.nonzero()[:, 1].view(scores.size(0), k)  # row-major: each row's columns in increasing order
    return scores.gather(1, index), index


# ---- the classes with_plugin_trainer returns: one named class per trainer get_trainer can pick (RecBole 1.2.1's and the
# plugin's), each RecBole's (or the plugin's) with PluginTrainerMixin in front, under the name of the class it extends
class Trainer(PluginTrainerMixin, recbole_trainers.Trainer):
    """RecBole's Trainer with :class:`PluginTrainerMixin`."""


class KGTrainer(PluginTrainerMixin, recbole_trainers.KGTrainer):
    """RecBole's KGTrainer with :class:`PluginTrainerMixin`."""


class KGATTrainer(PluginTrainerMixin, recbole_trainers.KGATTrainer):
    """RecBole's KGATTrainer with :class:`PluginTrainerMixin`."""


class PretrainTrainer(PluginTrainerMixin, recbole_trainers.PretrainTrainer):
    """RecBole's PretrainTrainer with :class:`PluginTrainerMixin`."""


class MKRTrainer(PluginTrainerMixin, recbole_trainers.MKRTrainer):
    """RecBole's MKRTrainer with :class:`PluginTrainerMixin`."""


class TraditionalTrainer(PluginTrainerMixin, recbole_trainers.TraditionalTrainer):
    """RecBole's TraditionalTrainer with :class:`PluginTrainerMixin`."""


class DecisionTreeTrainer(PluginTrainerMixin, recbole_trainers.DecisionTreeTrainer):
    """RecBole's DecisionTreeTrainer with :class:`PluginTrainerMixin`."""


class XGBoostTrainer(PluginTrainerMixin, recbole_trainers.XGBoostTrainer):
    """RecBole's XGBoostTrainer with :class:`PluginTrainerMixin`."""


class LightGBMTrainer(PluginTrainerMixin, recbole_trainers.LightGBMTrainer):
    """RecBole's LightGBMTrainer with :class:`PluginTrainerMixin`."""


class RaCTTrainer(PluginTrainerMixin, recbole_trainers.RaCTTrainer):
    """RecBole's RaCTTrainer with :class:`PluginTrainerMixin`."""


class RecVAETrainer(PluginTrainerMixin, recbole_trainers.RecVAETrainer):
    """RecBole's RecVAETrainer with :class:`PluginTrainerMixin`."""


class NCLTrainer(PluginTrainerMixin, recbole_trainers.NCLTrainer):
    """RecBole's NCLTrainer with :class:`PluginTrainerMixin`."""


class RecBoleS3RecTrainer(PluginTrainerMixin, recbole_trainers.S3RecTrainer):
    """RecBole's S3RecTrainer with :class:`PluginTrainerMixin` (get_trainer picks the plugin's, below)."""


class S3RecTrainer(PluginTrainerMixin, PluginS3RecTrainer):
    """The plugin's S3RecTrainer (recbole_llm.trainer.s3rec_trainer) with :class:`PluginTrainerMixin`."""


PLUGIN_TRAINERS = {cls.__bases__[-1]: cls for cls in (
    Trainer, KGTrainer, KGATTrainer, PretrainTrainer, MKRTrainer,
    TraditionalTrainer, DecisionTreeTrainer, XGBoostTrainer, LightGBMTrainer, RaCTTrainer,
    RecVAETrainer, NCLTrainer, RecBoleS3RecTrainer, S3RecTrainer,
)}


def with_plugin_trainer(trainer_class):
    """``trainer_class`` with :class:`PluginTrainerMixin` in front: the named class above (idempotent)."""
    if issubclass(trainer_class, PluginTrainerMixin):
        return trainer_class
    if trainer_class not in PLUGIN_TRAINERS:
        raise TypeError(
            f"no plugin trainer for {trainer_class.__name__}: add one to recbole_llm/trainer/trainer.py, or subclass "
            "recbole_llm.trainer.PluginTrainerMixin"
        )
    return PLUGIN_TRAINERS[trainer_class]
