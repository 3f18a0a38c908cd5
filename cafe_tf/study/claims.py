"""A study's claims, computed from its done cells: estimate, 95% interval, n, and the preregistered decision.

A claim in the manifest names its statistic, the values it reads and its decision rule::

    {"id": "headroom_at_20pct", "statistic": "paired_difference",
     "pairs": [["full_s0:val_accuracy", "uniform20_s0:val_accuracy"], ...],
     "rule": {"estimate_at_least": 0.01, "ci_low_above": 0.0},
     "description": "..."}

A value is ``"<cell id>:<key>[.<key>...]"``: that cell's result, followed through nested dicts.
Statistics (:data:`STATISTICS`):

* ``paired_difference``: pairs ``[a, b]``; mean of ``a - b`` with its t-interval (n - 1 df).
* ``mean``: ``values``; mean with its t-interval.
* ``kendall_tau`` / ``spearman_rho``: pairs ``[x, y]``; the correlation with a percentile bootstrap
  interval over the pairs.
* ``kendall_tau_top_half``: pairs ``[x, y]``; tau over the items in the top half by ``y``.
* ``top_k_overlap``: pairs ``[x, y]``; the share of the ``k`` best by ``x`` (claim key ``"k"``,
  default 5) among the ``k`` best by ``y``.
* ``regret``: pairs ``[score, truth]``; the best truth minus the truth of the item scored best.
* ``kendall_tau_difference`` / ``spearman_rho_difference``: triples ``[x1, x2, y]``; ``stat(x1, y) -
  stat(x2, y)`` with a paired bootstrap interval.

The last five (and the two correlations) get percentile bootstrap intervals over the items.

Only complete items enter (every value of the pair or triple done). The rule's keys are
``estimate_above``, ``estimate_at_least``, ``estimate_at_most``, ``ci_low_above``, ``ci_high_below``; every one given
must hold for ``"pass"``. The decision is ``"pending"`` until every planned item is complete: the
planned n is fixed, no claim is decided early.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np

from cafe_tf import stats
from cafe_tf.study import ledger
from cafe_tf.study import manifest as manifest_lib

RULE_KEYS = ("estimate_above", "estimate_at_least", "estimate_at_most", "ci_low_above", "ci_high_below")


def value_of(ref: str, recs: Mapping[str, Mapping[str, Any]]) -> float | None:
    """The number ``ref`` (``"cell:key.sub"``) names, or None while that cell is not done.

    Raises:
      ValueError: a malformed reference, or a done cell whose result lacks the key.
    """
    cell, sep, path = str(ref).partition(":")
    if not sep or not path:
        raise ValueError(f"value {ref!r} must be '<cell id>:<result key>[.<key>...]'")
    if cell not in recs:
        return None
    node: Any = recs[cell]["result"]
    for key in path.split("."):
        if not isinstance(node, Mapping) or key not in node:
            have = sorted(node) if isinstance(node, Mapping) else type(node).__name__
            raise ValueError(f"value {ref!r}: cell {cell!r}'s result has no {key!r} (has {have})")
        node = node[key]
    return None if node is None else float(node)


def _complete(items, recs) -> list[list[float]]:
    out = []
    for item in items:
        vals = [value_of(r, recs) for r in (item if isinstance(item, (list, tuple)) else [item])]
        if all(v is not None for v in vals):
            out.append(vals)
    return out


def _paired(rows, claim):
    r = stats.mean_interval([a - b for a, b in rows])
    return r["mean"], r["low"], r["high"]


def _mean(rows, claim):
    r = stats.mean_interval([v[0] for v in rows])
    return r["mean"], r["low"], r["high"]


def _corr(fn):
    def compute(rows, claim):
        x, y = [r[0] for r in rows], [r[1] for r in rows]
        f = fn(claim)
        low, high = stats.bootstrap_ci(f, x, y)
        return f(x, y), low, high
    return compute


def _corr_difference(fn):
    def compute(rows, claim):
        x1, x2, y = ([r[i] for r in rows] for i in range(3))
        f = fn(claim)
        low, high = stats.bootstrap_difference_ci(f, x1, x2, y)
        return f(x1, y) - f(x2, y), low, high
    return compute


def _plain(fn):
    return lambda claim: fn


def _top_half_tau(claim):
    def f(x, y):
        x, y = np.asarray(x, float), np.asarray(y, float)
        top = np.argsort(-y, kind="stable")[: -(-len(y) // 2)]
        return stats.kendall_tau(x[top], y[top]) if len(top) >= 2 else float("nan")
    return f


def _top_k_overlap(claim):
    k = int(claim.get("k", 5))

    def f(x, y):
        x, y = np.asarray(x, float), np.asarray(y, float)
        return len(set(np.argsort(-x, kind="stable")[:k]) & set(np.argsort(-y, kind="stable")[:k])) / float(k)
    return f


def _regret(claim):
    def f(x, y):
        x, y = np.asarray(x, float), np.asarray(y, float)
        return float(y.max() - y[int(np.argmax(x))])
    return f


# statistic -> (the claim's key holding its items, items' arity, minimum n, compute(rows, claim) -> (est, lo, hi))
STATISTICS: dict[str, tuple[str, int, int, Callable]] = {
    "paired_difference": ("pairs", 2, 1, _paired),
    "mean": ("values", 1, 1, _mean),
    "kendall_tau": ("pairs", 2, 2, _corr(_plain(stats.kendall_tau))),
    "spearman_rho": ("pairs", 2, 2, _corr(_plain(stats.spearman_rho))),
    "kendall_tau_top_half": ("pairs", 2, 4, _corr(_top_half_tau)),
    "top_k_overlap": ("pairs", 2, 2, _corr(_top_k_overlap)),
    "regret": ("pairs", 2, 2, _corr(_regret)),
    "kendall_tau_difference": ("triples", 3, 2, _corr_difference(_plain(stats.kendall_tau))),
    "spearman_rho_difference": ("triples", 3, 2, _corr_difference(_plain(stats.spearman_rho))),
}


def _none_if_nan(x):
    return None if x is None or (isinstance(x, float) and math.isnan(x)) else float(x)


def decide(rule: Mapping[str, float], estimate, ci_low, ci_high) -> bool:
    """Whether every condition of ``rule`` holds (an undefined interval fails its conditions)."""
    unknown = [k for k in rule if k not in RULE_KEYS]
    if unknown:
        raise ValueError(f"rule keys {unknown} unknown; valid: {list(RULE_KEYS)}")
    checks = {"estimate_above": (estimate, lambda v, t: v > t), "estimate_at_least": (estimate, lambda v, t: v >= t), "estimate_at_most": (estimate, lambda v, t: v <= t),
              "ci_low_above": (ci_low, lambda v, t: v > t), "ci_high_below": (ci_high, lambda v, t: v < t)}
    return all(checks[k][0] is not None and checks[k][1](checks[k][0], t) for k, t in rule.items())


def evaluate(claim: Mapping[str, Any], recs: Mapping[str, Mapping[str, Any]]) -> dict[str, Any]:
    """One claim's ``{"id", "statistic", "estimate", "ci_low", "ci_high", "n", "planned_n", "decision", ...}``.

    Raises:
      ValueError: an unknown statistic, items of the wrong arity, or a bad reference or rule.
    """
    name = claim.get("statistic")
    if name not in STATISTICS:
        raise ValueError(f"claim {claim.get('id')!r}: unknown statistic {name!r}; valid: {sorted(STATISTICS)}")
    key, arity, min_n, compute = STATISTICS[name]
    items = claim.get(key)
    if not isinstance(items, list) or not items:
        raise ValueError(f"claim {claim['id']!r} ({name}) needs a non-empty list {key!r}")
    for item in items:
        size = len(item) if isinstance(item, (list, tuple)) else 1
        if size != arity:
            raise ValueError(f"claim {claim['id']!r}: each of {key!r} must hold {arity} values, got {item!r}")
    rows = _complete(items, recs)
    estimate = ci_low = ci_high = None
    if len(rows) >= min_n:
        estimate, ci_low, ci_high = (_none_if_nan(v) for v in compute(rows, claim))
    out = {"id": claim["id"], "statistic": name, "estimate": estimate, "ci_low": ci_low, "ci_high": ci_high,
           "n": len(rows), "planned_n": len(items), "rule": claim.get("rule", {}),
           "description": claim.get("description", "")}
    if not claim.get("rule"):
        out["decision"] = "reported"
    elif len(rows) < len(items):
        out["decision"] = "pending"
    else:
        out["decision"] = "pass" if decide(claim["rule"], estimate, ci_low, ci_high) else "fail"
    return out


def summary(study_dir: str) -> dict[str, Any]:
    """Every claim of the study from its done cells (complete items only).

    Returns:
      ``{"name", "manifest_sha256", "done", "planned", "claims": [evaluate(...) per claim]}``.

    Raises:
      StudyError: cell records of mixed manifest hashes, or of a manifest other than the present one.
    """
    m = manifest_lib.load(study_dir)
    sha = manifest_lib.manifest_sha256(study_dir)
    table = manifest_lib.cell_table(m)
    recs = {cid: r for cid, r in ledger.records(study_dir).items()}
    ledger.check_hashes(study_dir, recs, sha)
    return {"name": m["name"], "manifest_sha256": sha, "planned": len(table), "done": sum(c in recs for c in table),
            "claims": [evaluate(c, recs) for c in m["claims"]]}


def render(s: Mapping[str, Any]) -> str:
    """``summary`` as a table."""
    def f(v):
        return "-" if v is None else f"{v:+.4f}"

    lines = [f"study {s['name']}  manifest {s['manifest_sha256'][:12]}  cells {s['done']}/{s['planned']}",
             f"{'claim':<36} {'statistic':<22} {'estimate':>9} {'95% interval':>21} {'n':>7}  decision"]
    for c in s["claims"]:
        interval = f"[{f(c['ci_low'])}, {f(c['ci_high'])}]"
        n = f"{c['n']}/{c['planned_n']}"
        lines.append(f"{c['id']:<36} {c['statistic']:<22} {f(c['estimate']):>9} {interval:>21} {n:>7}  {c['decision']}")
    return "\n".join(lines) + "\n"
