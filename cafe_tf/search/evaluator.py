"""Scoring width assignments with a trained supernet, and the score cache every search shares.

:class:`SupernetEvaluator` scores a width assignment (bins per group, ``cafe_tf.space``) as
follows: for each of K free-channel arrangements (the base + leftmost choice first, then distinct
random ones drawn from a seed fixed by the widths, so a score is reproducible), recalibrate the BN
statistics of its channels on a few hundred training images (``Supernet.calibrate_bn``), measure
accuracy on the held-out **validation** split (never test), and keep the best arrangement.
Accuracy is the standard loop's for the data's task: top-1, or for a multi-label set (CelebA's 40
attributes) the mean per-attribute accuracy.
With K = 1, or a fixed-sharing space (r = 0), only the leftmost arrangement is scored.

**Equal scoring** (``scoring="equal"``, what ``cafe_tf.compare`` uses so that every arm's scores
carry the same noise): every candidate of every space gets exactly K evaluations, on the same
validation images; evaluation i recalibrates BN on its own calibration set i (the calibration
images are cut into K consecutive sets of equal size) and scores arrangement ``i mod L`` of the
L <= K arrangements the space offers (a fixed-sharing space: the leftmost one K times). The score is
the best of the K, for every arm alike, so the optimism of a maximum is the same everywhere.
:meth:`SupernetEvaluator.repeat_scores` measures the noise itself: one arrangement under several
calibration sets.

Recalibration rewrites the moving statistics of exactly the channels a candidate uses, so a score
does not depend on which candidates were scored before it: a cached score is the score.

:class:`ScoreCache` wraps any scorer (the evaluator, or a synthetic function in tests) with an
in-memory and on-disk cache (an atomic JSON file rewritten after every new score), so a search that
is killed and run again re-evaluates nothing. The file records a fingerprint of what produced the
scores (supernet file hash, evaluator settings); a cache with another fingerprint is not reused.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any

import numpy as np
import tensorflow as tf
from absl import logging

from cafe_tf import io
from cafe_tf.slim import Supernet
from cafe_tf.space import SearchSpace
from cafe_tf.training import kernel

CACHE_SCHEMA = "cafe_tf.search_cache"
CACHE_VERSION = 1

Scorer = Callable[[np.ndarray], "float | Mapping[str, Any]"]
SCORINGS = ("arrangements", "equal")


def split_calibration(batches: Sequence[tf.Tensor], sets: int) -> list[list[tf.Tensor]]:
    """``batches`` (image tensors) cut into ``sets`` consecutive sets of equally many images (the rest dropped)."""
    images = tf.concat(list(batches), axis=0)
    per = int(images.shape[0]) // sets
    if per < 1:
        raise ValueError(f"{int(images.shape[0])} calibration images cannot make {sets} sets; give >= {sets}")
    batch = max(int(batches[0].shape[0]), 1)
    return [[images[i * per + j: i * per + min(j + batch, per)] for j in range(0, per, batch)] for i in range(sets)]


def widths_key(widths: Sequence[int]) -> str:
    """The cache key of a width assignment ("3,1,8,...")."""
    return ",".join(str(int(w)) for w in widths)


class ScoreCache:
    """Scores width assignments once: ``cache(widths) -> score``; records hold the scorer's extra fields."""

    def __init__(self, scorer: Scorer, path: str | None = None, fingerprint: Mapping[str, Any] | None = None):
        self.scorer, self.path = scorer, path
        self.fingerprint = dict(fingerprint or {})
        self.records: dict[str, dict[str, Any]] = {}
        self.hits = self.misses = 0
        if path and os.path.isfile(path):
            stored = io.read_artifact(path, CACHE_SCHEMA, (CACHE_VERSION,), ("fingerprint", "records"))
            if stored["fingerprint"] == io_jsonable(self.fingerprint):
                self.records = dict(stored["records"])
                logging.info("score cache %s: %d scores reused", path, len(self.records))
            else:
                logging.warning("score cache %s was written by another supernet or evaluator setting; starting afresh",
                                path)

    def record(self, widths: Sequence[int]) -> dict[str, Any]:
        """The cached record ({"score": float, ...}) of ``widths``, scoring it on a miss."""
        key = widths_key(widths)
        if key in self.records:
            self.hits += 1
            return self.records[key]
        self.misses += 1
        value = self.scorer(np.asarray(widths, np.int64))
        rec = dict(value) if isinstance(value, Mapping) else {"score": float(value)}
        rec["score"] = float(rec["score"])
        self.records[key] = io_jsonable(rec)
        if self.path:
            self.save()
        return self.records[key]

    def __call__(self, widths: Sequence[int]) -> float:
        return self.record(widths)["score"]

    def get(self, widths: Sequence[int]) -> dict[str, Any] | None:
        """The record of ``widths`` if it was scored (no scoring, not counted as a hit)."""
        return self.records.get(widths_key(widths))

    def __contains__(self, widths: Sequence[int]) -> bool:
        return widths_key(widths) in self.records

    def __len__(self) -> int:
        return len(self.records)

    def items(self) -> Iterator[tuple[np.ndarray, dict[str, Any]]]:
        """(widths, record) of every scored assignment."""
        for key, rec in self.records.items():
            yield np.asarray([int(x) for x in key.split(",")], np.int64), rec

    def save(self) -> None:
        """Writes the cache atomically (a kill never leaves half a file)."""
        if self.path:
            io.write_artifact(self.path, CACHE_SCHEMA, CACHE_VERSION,
                              {"fingerprint": io_jsonable(self.fingerprint), "records": self.records})


def io_jsonable(value: Any) -> Any:
    """Plain JSON types (numpy scalars and arrays, tuples) for comparing and storing records."""
    if isinstance(value, Mapping):
        return {str(k): io_jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [io_jsonable(v) for v in value]
    if hasattr(value, "tolist"):
        return value.tolist()
    return value


class SupernetEvaluator:
    """Validation accuracy of a width assignment: best of K arrangements, each after BN recalibration."""

    def __init__(
        self,
        supernet: Supernet,
        space: SearchSpace,
        calibration: Sequence[tf.Tensor],
        validation: Sequence[tuple[tf.Tensor, tf.Tensor]],
        num_candidates: int = 2,
        seed: int = 0,
        task: str | None = None,
        scoring: str = "arrangements",
        screen_fraction: float = 1.0,
    ):
        """``calibration``: image batches (a few hundred training images); ``validation``: (images, labels) batches.

        ``task``: "classification" or "multilabel"; ``None`` reads it from the validation labels
        (0/1 vectors per example: multi-label). ``scoring``: "arrangements" (best of up to K
        arrangements, one calibration set) or "equal" (exactly K evaluations, ``calibration`` cut
        into K sets; see the module doc). ``screen_fraction`` < 1 screens the evaluations on that share
        of the validation batches and finishes only the best one (:meth:`__call__`).
        """
        if num_candidates < 1:
            raise ValueError(f"num_candidates must be >= 1, got {num_candidates}")
        if scoring not in SCORINGS:
            raise ValueError(f"scoring {scoring!r} is not one of {SCORINGS}")
        if not 0 < screen_fraction <= 1:
            raise ValueError(f"screen_fraction must be in (0, 1] (1 = no screening), got {screen_fraction!r}")
        if not calibration or not validation:
            raise ValueError("the evaluator needs calibration images and validation batches; got none")
        self.supernet, self.space = supernet, space
        self.calibration, self.validation = list(calibration), list(validation)
        self.num_candidates, self.seed, self.scoring = int(num_candidates), int(seed), scoring
        self.calibration_sets = (split_calibration(self.calibration, self.num_candidates) if scoring == "equal"
                                 else [self.calibration])
        self.task = task or kernel.label_task(self.validation[0][1])
        # The kernel's evaluation: the loss and accuracy every training loop reports, here at one width.
        self._eval_step = kernel.make_eval_step(
            lambda images, selection: supernet(images, selection=selection, training=False), self.task)
        # Screening: the first ``screen_batches`` validation batches rank the evaluations.
        self.screen_batches = max(1, round(screen_fraction * len(self.validation)))
        self.evaluations = 0  # calibrations (each followed by one validation pass, whole or part)
        self.images_evaluated = 0  # validation images run through the supernet, all scores together

    def arrangements(self, widths: Sequence[int]) -> list[tuple[tuple[int, ...], ...]]:
        """The arrangements scored for ``widths``: leftmost first, then distinct random ones (seeded by the widths)."""
        w = self.space.check_widths(widths)
        out = [tuple(self.space.fixed(w))]
        if self.space.r == 0 or self.num_candidates == 1:
            return out
        total = 1
        for i, k in enumerate(w):
            total *= len(self.space.candidates(i, int(k)))
            if total >= self.num_candidates:
                break
        rng = np.random.default_rng([self.seed, *[int(x) for x in w]])
        for _ in range(50 * self.num_candidates):
            if len(out) >= min(self.num_candidates, total):
                break
            a = tuple(self.space.sample_arrangement(w, rng))
            if a not in out:
                out.append(a)
        return out

    def score_arrangement(self, arrangement: Sequence[Sequence[int]], calibration_set: int = 0,
                          batches: Sequence[tuple[tf.Tensor, tf.Tensor]] | None = None) -> dict[str, float]:
        """{"accuracy", "loss", "examples"} of one arrangement on ``batches`` (default: the whole validation
        set) after recalibrating its BN statistics on a calibration set (deterministic: the same images
        every time, so a recalibrated arrangement continues exactly where it stopped)."""
        return self.score_channels(self.space.channels(arrangement), calibration_set, batches)

    def score_channels(self, channels: Mapping[int, np.ndarray], calibration_set: int = 0,
                       batches: Sequence[tuple[tf.Tensor, tf.Tensor]] | None = None) -> dict[str, float]:
        """:meth:`score_arrangement` of a channel selection ({group id: channel indices}), on the bin grid or
        off it (a uniformly scaled net fitted to a MACs target)."""
        selection = self.supernet.trace_selection(dict(channels))
        self.supernet.calibrate_bn(selection, self.calibration_sets[calibration_set])
        self.evaluations += 1
        result = kernel.evaluate(self._eval_step, self.validation if batches is None else batches, selection)
        self.images_evaluated += result["examples"]
        return result

    def __call__(self, widths: Sequence[int]) -> dict[str, Any]:
        """{"score": best accuracy, "loss", "arrangement" (bins per group), "candidates": accuracies of all K}.

        Without screening every evaluation (an arrangement on a calibration set) runs on every
        validation image and the best counts; ties (common on small validation sets) go to the lower
        loss. With screening (``screen_fraction`` < 1 and more than one evaluation) they are ranked
        the same way on the first ``screen_batches`` batches, and only the best is recalibrated and
        run on the rest: the width's score is its accuracy on all the validation images, as without
        screening whenever the screen picks the same evaluation. "candidates" then holds the
        screening accuracies. Cost per width: K x screen + the rest, instead of K x all.
        """
        arrangements = self.arrangements(widths)
        if self.scoring == "equal":  # exactly K evaluations, evaluation i on calibration set i
            plan = [(arrangements[i % len(arrangements)], i) for i in range(self.num_candidates)]
        else:
            plan = [(a, 0) for a in arrangements]
        screening = len(plan) > 1 and self.screen_batches < len(self.validation)
        head = self.validation[: self.screen_batches] if screening else None
        best, scored = None, []
        for arrangement, calibration_set in plan:
            result = self.score_arrangement(arrangement, calibration_set, head)
            scored.append(result["accuracy"])
            if best is None or (result["accuracy"], -result["loss"]) > (best[0]["accuracy"], -best[0]["loss"]):
                best = (result, arrangement, calibration_set)
        result, arrangement, calibration_set = best
        if screening:
            rest = self.score_arrangement(arrangement, calibration_set, self.validation[self.screen_batches:])
            n = result["examples"] + rest["examples"]
            result = {key: (result[key] * result["examples"] + rest[key] * rest["examples"]) / n
                      for key in ("accuracy", "loss")}
        return {"score": result["accuracy"], "loss": result["loss"], "arrangement": [list(b) for b in arrangement],
                "candidates": scored}

    def repeat_scores(self, widths: Sequence[int]) -> list[float]:
        """Validation accuracy of the leftmost arrangement of ``widths`` under each calibration set (the scoring noise)."""
        arrangement = self.arrangements(widths)[0]
        return [self.score_arrangement(arrangement, i)["accuracy"] for i in range(len(self.calibration_sets))]
