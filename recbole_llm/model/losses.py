"""Sampled softmax (``loss_type: SSM``): the negative sampler, the loss and the mixin the backbones share. The
contrastive losses of SCFT and the LLMEmb alignment live in recbole_llm.llm.contrastive."""

import torch

from recbole_llm.errors import ConfigError


class NegativeSampler:
    """Shared negatives drawn from the catalogue: ``uniform`` over the items, or ``popularity`` (training counts **
    power). ``sample(m)`` -> (items (m,), log expected count (m,)): drawn with replacement, so item j is expected
    ``m * q_j`` times; item 0 (padding) and the items given to :meth:`exclude` (cold-start items) have q = 0.
    """

    def __init__(self, n_items, kind="uniform", counts=None, power=0.75):
        if kind not in ("uniform", "popularity"):
            raise ConfigError(f"config key 'ssm_sampler' must be uniform or popularity, got {kind!r}")
        weights = torch.ones(n_items, dtype=torch.float64)
        if kind == "popularity":
            weights = torch.as_tensor(counts, dtype=torch.float64).clamp(min=0) ** power
        weights[0] = 0
        if weights.sum() <= 0:
            raise ConfigError("sampled softmax: no item can be drawn as a negative")
        self.q = (weights / weights.sum()).float()

    def exclude(self, mask):
        q = self.q.clone()
        q[torch.as_tensor(mask, dtype=torch.bool).cpu()[: len(q)]] = 0
        self.q = q / q.sum()

    def sample(self, m, device, generator=None):
        items = torch.multinomial(self.q, m, replacement=True, generator=generator)
        return items.to(device), torch.log(m * self.q[items]).to(device)


def sampled_softmax_loss(states, pos_items, table, neg_items, log_q_neg, in_batch=False, log_q_batch=None, bias=None):
    """Sampled softmax with the logQ correction (Bengio & Senecal 2008; Jean et al. 2015), mean over rows.

    Row i scores its positive (uncorrected) and the shared negatives ``neg_items`` (M,): logits ``s - log Q``
    where Q is the expected number of draws of that item (``log_q_neg``); negatives equal to the row's positive
    (accidental hits) are removed. With
    ``in_batch`` the other rows' positives are negatives too, corrected by ``log_q_batch`` (N,) (their expected
    count among the batch's targets). ``bias`` (per table row, BERT4Rec's output bias) is added to every score.
    Returns -mean_i log softmax(pos).
    """
    if bias is None:
        bias = table.new_zeros(table.size(0))
    pos_logit = (states * table[pos_items]).sum(-1) + bias[pos_items]
    neg_logit = states @ table[neg_items].t() + bias[neg_items] - log_q_neg.unsqueeze(0)
    neg_logit = neg_logit.masked_fill(neg_items.unsqueeze(0) == pos_items.unsqueeze(1), float("-inf"))
    parts = [pos_logit.unsqueeze(1), neg_logit]
    if in_batch:
        batch_logit = states @ table[pos_items].t() + bias[pos_items] - log_q_batch.unsqueeze(0)
        batch_logit = batch_logit.masked_fill(pos_items.unsqueeze(0) == pos_items.unsqueeze(1), float("-inf"))  # self and duplicates
        parts.append(batch_logit)
    logits = torch.cat(parts, dim=1)
    return -(logits[:, 0] - torch.logsumexp(logits, dim=1)).mean()


class SampledSoftmaxMixin:
    """``loss_type: SSM`` for a sequential backbone: the sampler built from the training split and the loss.

    Keys (properties/model/SASRec.yaml, GRU4Rec.yaml, BERT4Rec.yaml): ``ssm_negatives``, ``ssm_sampler``, ``ssm_power``,
    ``ssm_in_batch``. ``negative_sampler`` stays None for the other loss types.
    """

    def setup_plugin_options(self, config, dataset, loss_type):
        """The options every plugin backbone shares, after RecBole's __init__: the loss type (SSM's sampler),
        ``length_bucketing``, ``train_mode`` and the all-positions target field."""
        from recbole_llm.model.train_modes import check_train_mode, target_list_field

        self.loss_type = loss_type
        if loss_type == "SSM":
            self.init_sampled_softmax(config, dataset)
        self.length_bucketing = config["length_bucketing"] is not False
        self.train_mode = check_train_mode(config)
        self.TARGET_SEQ = target_list_field(self.ITEM_ID)

    negative_sampler = None  # the cold-start protocol excludes its cold items from any model's sampler

    def init_sampled_softmax(self, config, dataset):
        from recbole_llm.evaluator.longtail import training_statistics

        self.ssm_negatives = int(config["ssm_negatives"])
        self.ssm_in_batch = bool(config["ssm_in_batch"])
        counts, _ = training_statistics(dataset)
        self.negative_sampler = NegativeSampler(self.n_items, config["ssm_sampler"], counts, float(config["ssm_power"]))
        pop = counts.double().clamp(min=0)
        pop[0] = 0
        self.register_buffer("ssm_target_q", (pop / pop.sum().clamp(min=1)).float(), persistent=False)

    def sample_negatives(self, device):
        return self.negative_sampler.sample(self.ssm_negatives, device)

    def ssm_loss(self, states, pos_items, table, negs, log_q, local=None, bias=None):
        """The SSM loss of ``states`` for ``pos_items`` (global ids) against ``table``; ``local`` renumbers global
        ids into the rows of a compact ``table`` (None: ``table`` is the whole item table); ``bias`` per table row."""
        log_q_batch = None
        if self.ssm_in_batch:  # expected count of each target among the batch's N targets
            log_q_batch = torch.log((len(pos_items) * self.ssm_target_q[pos_items]).clamp(min=1e-12))
        to_row = local or (lambda ids: ids)
        return sampled_softmax_loss(states, to_row(pos_items), table, to_row(negs), log_q, in_batch=self.ssm_in_batch,
                                    log_q_batch=log_q_batch, bias=bias)
