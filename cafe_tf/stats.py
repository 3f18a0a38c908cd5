"""Statistics of paired experiments: paired differences with t-intervals, rank correlations, bootstrap intervals.

Used by the comparison program (``cafe_tf.compare``), the benchmarks and the study runner's
``summary`` (``cafe_tf.study.claims``). Everything takes plain sequences or dicts and returns floats
or dicts; intervals are two-sided at ``level`` (95% by default).
"""

from __future__ import annotations


def kendall_tau(x, y) -> float:
    """Kendall's tau-b of two equally long sequences (ties in either count as neither concordant nor discordant)."""
    import numpy as np

    x, y = _pairs(x, y, "kendall_tau")
    i, j = np.triu_indices(len(x), k=1)
    dx, dy = np.sign(x[i] - x[j]), np.sign(y[i] - y[j])
    concordant_minus_discordant = float(np.sum(dx * dy))
    pairs_x, pairs_y = float(np.sum(dx != 0)), float(np.sum(dy != 0))
    if pairs_x == 0 or pairs_y == 0:
        return float("nan")  # one side is constant: no ranking to compare
    return concordant_minus_discordant / float(np.sqrt(pairs_x * pairs_y))


def _pairs(x, y, what: str):
    import numpy as np

    x, y = np.asarray(x, float), np.asarray(y, float)
    if x.shape != y.shape or x.ndim != 1:
        raise ValueError(f"{what} needs two 1-D sequences of one length, got shapes {x.shape} and {y.shape}")
    if len(x) < 2:
        raise ValueError(f"{what} needs at least 2 pairs, got {len(x)}")
    return x, y


def ranks(x):
    """Ranks 1..n of ``x``, ties getting their average rank."""
    import numpy as np

    x = np.asarray(x, float)
    order = np.argsort(x, kind="mergesort")
    out = np.empty(len(x), float)
    out[order] = np.arange(1, len(x) + 1)
    for value in np.unique(x):
        tied = x == value
        out[tied] = out[tied].mean()
    return out


def spearman_rho(x, y) -> float:
    """Spearman's rho: Pearson's correlation of the (average) ranks; NaN when one side is constant."""
    import numpy as np

    x, y = _pairs(x, y, "spearman_rho")
    rx, ry = ranks(x) - (len(x) + 1) / 2, ranks(y) - (len(y) + 1) / 2
    denom = float(np.sqrt(np.sum(rx * rx) * np.sum(ry * ry)))
    return float(np.sum(rx * ry)) / denom if denom else float("nan")


def bootstrap_ci(stat, x, y, num_resamples: int = 2000, seed: int = 0, level: float = 0.95) -> tuple[float, float]:
    """Percentile bootstrap interval of ``stat(x, y)`` over the pairs (resampled with replacement, seeded).

    Resamples whose statistic is undefined (NaN: a constant side) are dropped; (nan, nan) if all are.
    """
    import numpy as np

    x, y = _pairs(x, y, "bootstrap_ci")
    rng = np.random.default_rng([seed, 0xB007])
    values = []
    for _ in range(num_resamples):
        idx = rng.integers(0, len(x), len(x))
        values.append(stat(x[idx], y[idx]))
    return _percentile_interval(values, level)


def _percentile_interval(values, level: float) -> tuple[float, float]:
    """The central ``level`` percentile interval of bootstrap ``values`` (NaNs dropped; NaN, NaN if none)."""
    import numpy as np

    values = np.asarray(values, float)
    values = values[~np.isnan(values)]
    if not values.size:
        return float("nan"), float("nan")
    alpha = (1.0 - level) / 2
    return float(np.quantile(values, alpha)), float(np.quantile(values, 1.0 - alpha))


def paired_difference(a: dict, b: dict, level: float = 0.95) -> dict | None:
    """Mean of ``a[s] - b[s]`` over the seeds both have, with its t-interval (None below 2 pairs: no interval)."""
    seeds = [s for s in a if a[s] is not None and b.get(s) is not None]
    if not seeds:
        return None
    diffs = [float(a[s] - b[s]) for s in seeds]
    return {**mean_interval(diffs, level), "diffs": diffs}


def mean_interval(values, level: float = 0.95) -> dict:
    """Mean of ``values`` with its t-interval: ``{"n", "mean", "low", "high"}`` (low/high None below 2 values)."""
    import numpy as np
    from scipy import stats

    d = np.asarray(list(values), float)
    out = {"n": len(d), "mean": float(d.mean()) if len(d) else float("nan"), "low": None, "high": None}
    if len(d) >= 2:
        half = float(stats.t.ppf(0.5 + level / 2, len(d) - 1) * d.std(ddof=1) / np.sqrt(len(d)))
        out.update(low=out["mean"] - half, high=out["mean"] + half)
    return out


def bootstrap_difference_ci(stat, x1, x2, y, num_resamples: int = 2000, seed: int = 0,
                            level: float = 0.95) -> tuple[float, float]:
    """Paired percentile bootstrap interval of ``stat(x1, y) - stat(x2, y)`` (e.g. the difference of two taus).

    The same resampled items enter both statistics; resamples where either is NaN are dropped.
    """
    import numpy as np

    x1, y = _pairs(x1, y, "bootstrap_difference_ci")
    x2, _ = _pairs(x2, y, "bootstrap_difference_ci")
    rng = np.random.default_rng([seed, 0xD1FF])
    values = []
    for _ in range(num_resamples):
        idx = rng.integers(0, len(y), len(y))
        values.append(stat(x1[idx], y[idx]) - stat(x2[idx], y[idx]))
    return _percentile_interval(values, level)
