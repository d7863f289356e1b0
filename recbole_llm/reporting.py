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
    """Two bars per model (mean over seeds, std as error bar) for the (metric, label) pairs in ``groups``, saved at
    ``path``. A model without a group's mean (``None``: the group was not reported, e.g. no cold targets) gets no bar
    there but an "n/a" mark: a missing group is never drawn as a bar of 0."""
    import matplotlib.pyplot as plt

    fig = grouped_bars_figure(rows, groups, title)
    atomic_savefig(fig, path, dpi=120)
    plt.close(fig)
    return path


def grouped_bars_figure(rows, groups, title):
    """The figure of :func:`grouped_bars` (not saved)."""
    import matplotlib.pyplot as plt
    from matplotlib.patches import Patch

    fig, ax = plt.subplots(figsize=(max(6, 1.1 * len(rows)), 4))
    handles = []
    for i, (offset, (metric, label)) in enumerate(zip((-0.2, 0.2), groups)):
        colour = f"C{i}"
        handles.append(Patch(color=colour, label=label))
        drawn = [(x, r[f"{metric}_mean"], r.get(f"{metric}_std") or 0) for x, r in enumerate(rows) if r.get(f"{metric}_mean") is not None]
        if drawn:
            xs, means, stds = zip(*drawn)
            ax.bar([x + offset for x in xs], means, 0.4, yerr=stds, color=colour, capsize=3)
        for x, r in enumerate(rows):
            if r.get(f"{metric}_mean") is None:
                ax.text(x + offset, 0, "n/a", ha="center", va="bottom", rotation=90, fontsize=8, color=colour)
    ax.set_xticks(range(len(rows)))
    ax.set_xticklabels([r["model"] for r in rows], rotation=30, ha="right")
    ax.set_ylabel("NDCG@10")
    ax.set_title(title)
    ax.legend(handles=handles)
    fig.tight_layout()
    return fig
