"""Statistics and plots the benchmark and the suites share: the 95% interval of a mean, grouped bar plots."""

import math
import statistics

from recbole_llm.fileio import atomic_savefig


def t_quantile_975(df):
    """t(0.975, df): the multiplier of a two-sided 95% interval with ``df`` degrees of freedom (scipy.stats)."""
    from scipy.stats import t

    df = int(df)
    if df < 1:
        raise ValueError(f"degrees of freedom must be >= 1, got {df}")
    return float(t.ppf(0.975, df))


def mean_ci(values):
    """(mean, half-width of the 95% confidence interval of the mean); half-width None below 2 values.

    Student t with n-1 degrees of freedom: ``t(0.975, n-1) * s / sqrt(n)``, s the sample std.
    """
    values = [float(v) for v in values]
    if not values:
        return None, None
    mean = statistics.mean(values)
    if len(values) < 2:
        return mean, None
    return mean, t_quantile_975(len(values) - 1) * statistics.stdev(values) / math.sqrt(len(values))


def grouped_bars(rows, groups, title, path):
    """Two bars per model (mean over seeds, std as error bar) for the (metric, label) pairs in ``groups``."""
    import matplotlib.pyplot as plt
    import numpy as np

    fig, ax = plt.subplots(figsize=(max(6, 1.1 * len(rows)), 4))
    x = np.arange(len(rows))
    for offset, (metric, label) in zip((-0.2, 0.2), groups):
        means = [r[f"{metric}_mean"] or 0 for r in rows]
        stds = [r[f"{metric}_std"] or 0 for r in rows]
        ax.bar(x + offset, means, 0.4, yerr=stds, label=label, capsize=3)
    ax.set_xticks(x)
    ax.set_xticklabels([r["model"] for r in rows], rotation=30, ha="right")
    ax.set_ylabel("NDCG@10")
    ax.set_title(title)
    ax.legend()
    fig.tight_layout()
    atomic_savefig(fig, path, dpi=120)
    plt.close(fig)
    return path
