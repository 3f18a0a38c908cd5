"""Budgets of a width search: MACs, parameters and latency bounds, the feasible range, and sampling inside them.

A candidate (bin widths, ``cafe_tf.space``) is **within** the budget when every given bound holds
(``macs <= max_macs``, ``params <= max_params``, ``latency <= max_latency_ms``), and **in the
window** when it is also not far below it: at least one given bound is used to ``lower_ratio``
(0.8 by default: candidates between 0.8x the budget and the budget). With several bounds, using one of
them is enough (a net at the params budget but below 0.8x the MACs budget still spends the budget).

Latency comes from a predictor with ``predict_ms(keras_model) -> float`` (the deploy package's
latency table). When the predictor also offers ``predict_widths_ms(space, widths[N, G]) -> [N]``
(``deploy.latency_table.LatencyTable`` does), batches of candidates are predicted from their widths
in one vectorised call, so sampling, repair and filtering under a latency bound cost about what they
cost under a MACs bound. Otherwise (a user's predictor, or a custom ``build_model``) each candidate
is extracted as a plain model (fresh weights, no copy; latency does not depend on which channels are
kept) and predicted once, cached by width. Both paths give the same numbers and the same decisions.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable, Sequence
from typing import Any, Protocol

import numpy as np

from cafe_tf.space import SearchSpace


class BudgetError(ValueError):
    """A budget no sub-network can meet (or one above the full network); names the feasible range."""


class LatencyPredictor(Protocol):
    """What the search needs from a latency table: milliseconds of a plain Keras model."""

    def predict_ms(self, model: Any) -> float: ...


class WidthsLatencyPredictor(LatencyPredictor, Protocol):
    """A latency predictor that also predicts a batch of bin widths [N, G] of a space without building models."""

    def predict_widths_ms(self, space: SearchSpace, widths: np.ndarray) -> np.ndarray: ...


@dataclasses.dataclass(frozen=True)
class Budget:
    """Upper bounds (None = unconstrained) and the window's lower ratio."""

    max_macs: float | None = None
    max_params: float | None = None
    max_latency_ms: float | None = None
    lower_ratio: float = 0.8

    def __post_init__(self):
        for name in ("max_macs", "max_params", "max_latency_ms"):
            value = getattr(self, name)
            if value is not None and not value > 0:
                raise BudgetError(f"{name}={value!r} is invalid; a budget must be > 0 (or unset)")
        if self.max_macs is None and self.max_params is None and self.max_latency_ms is None:
            raise BudgetError("the search needs a budget: set max_macs, max_params or max_latency_ms")
        if not 0 <= self.lower_ratio <= 1:
            raise BudgetError(f"lower_ratio={self.lower_ratio!r} is invalid; it must be in [0, 1]")

    def bounds(self) -> dict[str, float]:
        """The given bounds by metric name (macs, params, latency_ms)."""
        out = {"macs": self.max_macs, "params": self.max_params, "latency_ms": self.max_latency_ms}
        return {k: float(v) for k, v in out.items() if v is not None}

    def describe(self) -> dict[str, Any]:
        """JSON-able record of the budget."""
        return {"max_macs": self.max_macs, "max_params": self.max_params, "max_latency_ms": self.max_latency_ms,
                "lower_ratio": self.lower_ratio}


_UNITS = {"macs": "MACs", "params": "parameters", "latency_ms": "ms"}
_FLAG = {"macs": "max_macs", "params": "max_params", "latency_ms": "max_latency_ms"}


class BudgetChecker:
    """Measures candidates of a space against a :class:`Budget`; samples and repairs candidates into its window."""

    def __init__(
        self,
        space: SearchSpace,
        budget: Budget,
        latency: LatencyPredictor | None = None,
        build_model: Callable[[np.ndarray], Any] | None = None,
    ):
        """``build_model(bin widths) -> keras.Model`` feeds the latency predictor (default: extraction
        of the space's model with fresh weights); giving one turns the widths path off."""
        if budget.max_latency_ms is not None and latency is None:
            raise BudgetError("max_latency_ms needs a latency table: set search.latency_table to its file")
        self.space, self.budget, self.latency = space, budget, latency
        self._build_model = build_model or self._extract
        predict_widths = getattr(latency, "predict_widths_ms", None)
        self._predict_widths = predict_widths if callable(predict_widths) and build_model is None else None
        self._widths_path_checked = False
        self._latency_cache: dict[tuple[int, ...], float] = {}
        self.bounds = budget.bounds()

    def _extract(self, widths: np.ndarray):
        from cafe_tf import surgery

        channels = self.space.channels(self.space.fixed(widths))
        return surgery.extract(self.space.graph.model, channels, graph=self.space.graph, copy_weights=False)

    def plain_model(self, widths: np.ndarray):
        """The candidate as the plain Keras model its latency is predicted on (the leftmost channels
        with fresh weights, or ``build_model``'s): what a check on the target exports and measures."""
        return self._build_model(self.space.check_widths(widths))

    # ----------------------------------------------------------------------------------------
    @property
    def latency_path(self) -> str | None:
        """How latency is predicted: "widths" (vectorised, no model built), "model" or None (no predictor)."""
        return None if self.latency is None else "widths" if self._widths_predictor() is not None else "model"

    def _widths_predictor(self) -> Callable[[SearchSpace, np.ndarray], np.ndarray] | None:
        """The predictor's ``predict_widths_ms`` if it can follow this space (tried once on the full net), else None."""
        if self._predict_widths is not None and not self._widths_path_checked:
            self._widths_path_checked = True
            try:
                self._predict_widths(self.space, self.space.num_bins[None])
            except NotImplementedError as e:  # e.g. a layer keyed by a config that holds its width
                logging.info("latency: cannot predict from widths here (%s); building a model per candidate", e)
                self._predict_widths = None
        return self._predict_widths

    def latency_ms(self, widths: np.ndarray) -> float:
        """Predicted latency of one candidate (cached)."""
        if self.latency is None:
            raise BudgetError("no latency table was given (search.latency_table)")
        key = tuple(int(w) for w in widths)
        if key not in self._latency_cache:
            predict_widths = self._widths_predictor()
            if predict_widths is not None:
                self._latency_cache[key] = float(predict_widths(self.space, np.asarray(key)[None])[0])
            else:
                self._latency_cache[key] = float(self.latency.predict_ms(self._build_model(np.asarray(key))))
        return self._latency_cache[key]

    def latency_batch(self, widths: np.ndarray) -> np.ndarray:
        """Predicted latency of a batch of candidates [N, G]: one call on the widths path, else one model each."""
        widths = np.atleast_2d(widths)
        predict_widths = self._widths_predictor()
        if predict_widths is not None:
            return np.asarray(predict_widths(self.space, widths), dtype=np.float64).reshape(len(widths))
        return np.array([self.latency_ms(w) for w in widths], dtype=np.float64)

    def measure(self, widths: np.ndarray) -> dict[str, Any]:
        """MACs, params (and latency when a predictor is set) of one candidate."""
        w = self.space.check_widths(widths)
        out: dict[str, Any] = {"macs": int(self.space.macs(w)), "params": int(self.space.params(w))}
        if self.latency is not None:
            out["latency_ms"] = self.latency_ms(w)
        return out

    def feasible_range(self) -> dict[str, tuple[float, float]]:
        """(smallest sub-network, full network) value of every bounded metric."""
        smallest, full = np.ones_like(self.space.num_bins), self.space.num_bins.copy()
        macs, params = self.measure_cheap(np.stack([smallest, full]))
        out = {"macs": (float(macs[0]), float(macs[1])), "params": (float(params[0]), float(params[1]))}
        if self.latency is not None:
            out["latency_ms"] = (self.latency_ms(smallest), self.latency_ms(full))
        return {k: v for k, v in out.items() if k in self.bounds}

    def check_feasible(self) -> None:
        """Raises BudgetError, naming the feasible range, if a bound is below the smallest net or above the full one."""
        for metric, (lo, hi) in self.feasible_range().items():
            bound = self.bounds[metric]
            where = ("below the smallest sub-network" if bound < lo else
                     "above the full network" if bound > hi else "")
            if where:
                fmt = (lambda v: f"{v:,.3f}") if metric == "latency_ms" else (lambda v: f"{int(round(v)):,}")
                raise BudgetError(
                    f"{_FLAG[metric]}={fmt(bound)} is infeasible: it is {where}; the feasible range of this "
                    f"search space is [{fmt(lo)}, {fmt(hi)}] {_UNITS[metric]} (smallest sub-network to full network)"
                )

    # ----------------------------------------------------------------------------------------
    def measure_cheap(self, widths: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(MACs, params) of a batch of candidates [N, G]: one matrix product each."""
        widths = np.atleast_2d(widths)
        return np.asarray(self.space.macs(widths)), np.asarray(self.space.params(widths))

    def _cheap_masks(self, widths: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(within the MACs/params bounds, uses a MACs/params bound to lower_ratio) for a batch."""
        macs, params = self.measure_cheap(widths)
        within = np.ones(len(macs), bool)
        used = np.zeros(len(macs), bool)
        for metric, values in (("macs", macs), ("params", params)):
            if metric in self.bounds:
                within &= values <= self.bounds[metric]
                used |= values >= self.budget.lower_ratio * self.bounds[metric]
        return within, used

    def _window_masks(self, widths: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(within every bound, uses one to lower_ratio) for a batch, latency predicted in one call
        for the candidates that meet the cheap bounds (widths path only)."""
        within, used = self._cheap_masks(widths)
        if "latency_ms" in self.bounds:
            bound, rows = self.bounds["latency_ms"], np.flatnonzero(within)
            latency = self.latency_batch(widths[rows]) if rows.size else np.zeros(0)
            within[rows] = latency <= bound
            used[rows] |= latency >= self.budget.lower_ratio * bound
        return within, used

    def within(self, widths: np.ndarray) -> bool:
        """Whether one candidate meets every bound."""
        ok, _ = self._cheap_masks(np.asarray(widths)[None])
        if not ok[0]:
            return False
        return "latency_ms" not in self.bounds or self.latency_ms(widths) <= self.bounds["latency_ms"]

    def in_window(self, widths: np.ndarray) -> bool:
        """Whether one candidate meets every bound and uses at least one to ``lower_ratio``."""
        ok, used = self._cheap_masks(np.asarray(widths)[None])
        if not ok[0]:
            return False
        if "latency_ms" in self.bounds:
            lat = self.latency_ms(widths)
            if lat > self.bounds["latency_ms"]:
                return False
            used[0] |= lat >= self.budget.lower_ratio * self.bounds["latency_ms"]
        return bool(used[0])

    def filter_window(self, widths: np.ndarray, limit: int | None = None) -> list[np.ndarray]:
        """The candidates of a batch that are in the window (at most ``limit``), cheap bounds first."""
        widths = np.atleast_2d(widths)
        if "latency_ms" not in self.bounds or self._widths_predictor() is not None:
            ok, used = self._window_masks(widths)
            return [widths[i].copy() for i in np.flatnonzero(ok & used)[:limit]]
        ok, used = self._cheap_masks(widths)  # model path: build models only until ``limit`` are found
        out = []
        for i in np.flatnonzero(ok if "latency_ms" in self.bounds else ok & used):
            if limit is not None and len(out) >= limit:
                break
            if "latency_ms" not in self.bounds or self.in_window(widths[i]):
                out.append(widths[i].copy())
        return out

    # ----------------------------------------------------------------------------------------
    def propose(self, rng: np.random.Generator, n: int) -> np.ndarray:
        """``n`` raw proposals: half uniform over bins, half around a random global width fraction.

        Uniform draws alone rarely reach budgets near the full net's cost (their MACs concentrate
        around a quarter of it), so the second half scales every group by one fraction plus noise.
        """
        half = n // 2
        uniform = self.space.sample_widths(rng, n - half)
        u = rng.uniform(0.0, 1.0, size=(half, 1))
        frac = np.clip(u + rng.normal(0.0, 0.15, size=(half, len(self.space.groups))), 0.0, 1.0)
        scaled = np.clip(np.ceil(frac * self.space.num_bins), 1, self.space.num_bins).astype(np.int64)
        return np.concatenate([uniform, scaled], axis=0)

    def sample(self, rng: np.random.Generator, n: int, max_rounds: int = 50, batch: int = 2048) -> list[np.ndarray]:
        """Up to ``n`` distinct candidates in the window (rejection sampling, then repair of misses)."""
        found: dict[tuple[int, ...], np.ndarray] = {}
        for _ in range(max_rounds):
            if len(found) >= n:
                break
            for w in self.filter_window(self.propose(rng, batch), limit=n - len(found)):
                found.setdefault(tuple(int(x) for x in w), w)
        tries = 0
        while len(found) < n and tries < 20 * n:  # tight windows: repair random proposals instead
            tries += 1
            w = self.repair(self.propose(rng, 2)[tries % 2], rng)
            if w is not None:
                found.setdefault(tuple(int(x) for x in w), w)
        return list(found.values())[:n]

    def repair(self, widths: np.ndarray, rng: np.random.Generator, max_moves: int | None = None) -> np.ndarray | None:
        """Moves a candidate into the window one bin at a time (shrink while over, grow while under).

        Returns None when it cannot get there (nothing left to shrink, or every growth breaks a bound).
        """
        w = self.space.check_widths(widths).copy()
        n_bins = self.space.num_bins
        max_moves = max_moves or int(n_bins.sum()) * 2
        for _ in range(max_moves):
            if self.in_window(w):
                return w
            if not self.within(w):
                shrinkable = np.flatnonzero(w > 1)
                if not shrinkable.size:
                    return None
                w[rng.choice(shrinkable)] -= 1
                continue
            # Under the window: grow a random group whose next bin keeps every cheap bound.
            growable = np.flatnonzero(w < n_bins)
            if not growable.size:
                return None
            trial = np.repeat(w[None], growable.size, axis=0)
            trial[np.arange(growable.size), growable] += 1
            ok, _ = self._cheap_masks(trial)
            options = growable[ok]
            if not options.size:
                return None
            w[rng.choice(options)] += 1
        return w if self.in_window(w) else None

    def clip(self, widths: Sequence[int]) -> np.ndarray:
        """Widths clipped to each group's 1..num_bins."""
        return np.clip(np.asarray(widths, np.int64), 1, self.space.num_bins)
