"""The contrastive losses of SCFT (LLM side) and the LLMEmb collaborative alignment (RAT): one definition for both."""

import torch
import torch.nn.functional as F


def soft_contrastive_loss(x, y, tau):
    """The LLMEmb two-sided soft-target contrastive loss over a batch of B pairs (x_i, y_i).

        L = X Y^T / tau,   T = softmax_row(tau * (X X^T + Y Y^T) / 2)
        loss = 1/(2B) * sum_i [ -sum_j T_ij log softmax_j(L_i.) - sum_j T_ji log softmax_j(L_.i) ]

    Computed in fp32. ``tau`` may be a float or a (learnable) scalar tensor.
    """
    x, y = x.float(), y.float()
    logits = x @ y.t() / tau
    targets = torch.softmax(tau * (x @ x.t() + y @ y.t()) / 2, dim=1)
    row_term = -(targets * F.log_softmax(logits, dim=1)).sum()
    col_term = -(targets * F.log_softmax(logits, dim=0)).sum()
    return (row_term + col_term) / (2 * x.size(0))


def info_nce_loss(x, y, tau):
    """Plain symmetric InfoNCE with in-batch negatives (the diagonal is the positive)."""
    x, y = x.float(), y.float()
    logits = x @ y.t() / tau
    labels = torch.arange(x.size(0), device=x.device)
    return (F.cross_entropy(logits, labels) + F.cross_entropy(logits.t(), labels)) / 2
