"""Candidate scoring with screening: the K arrangements ranked on part of the validation set, the best finished."""

import keras
import numpy as np
import pytest
import tensorflow as tf

from cafe_tf.models.registry import build_builtin
from cafe_tf.search import SupernetEvaluator
from cafe_tf.search.run import search_section, validate_search
from cafe_tf.config import ConfigError
from cafe_tf.slim import Supernet
from cafe_tf.space import space_from_section
from cafe_tf.training.supernet import supernet_section


@pytest.fixture(scope="module")
def setup():
    keras.utils.set_random_seed(3)
    model = build_builtin("resnet20", (12, 12, 1), 4, width_mult=0.5)
    supernet = Supernet(model)
    space = space_from_section(supernet.graph, supernet_section())
    rng = np.random.default_rng(0)
    calibration = [tf.constant(rng.normal(size=(32, 12, 12, 1)), tf.float32) for _ in range(2)]
    validation = [(tf.constant(rng.normal(size=(40, 12, 12, 1)), tf.float32),
                   tf.constant(rng.integers(0, 4, 40), tf.int64)) for _ in range(6)]
    return supernet, space, calibration, validation


def evaluator(setup, fraction, k=3):
    supernet, space, calibration, validation = setup
    return SupernetEvaluator(supernet, space, calibration, validation, num_candidates=k, seed=1,
                             screen_fraction=fraction)


def middle_widths(space, rng):
    """Widths below full in every group (so each has several arrangements), drawn at random."""
    return np.asarray([rng.integers(1, n) if n > 1 else 1 for n in space.num_bins], np.int64)


def test_screened_score_is_the_screen_winners_accuracy_on_every_image(setup):
    _, space, _, validation = setup
    full, screened = evaluator(setup, 1.0), evaluator(setup, 1 / 3)
    assert screened.screen_batches == 2
    agree = 0
    for seed in range(3):
        widths = middle_widths(space, np.random.default_rng(seed))
        arrangements = full.arrangements(widths)
        k = len(arrangements)
        assert k == 3
        whole = [full.score_arrangement(a) for a in arrangements]
        before = screened.images_evaluated
        rec = screened(widths)
        # Cost: K arrangements on the 2 screening batches, then the winner on the other 4.
        assert screened.images_evaluated - before == 3 * 80 + 160
        head = [screened.score_arrangement(a, batches=validation[:2]) for a in arrangements]
        winner = max(range(3), key=lambda i: (head[i]["accuracy"], -head[i]["loss"]))
        assert rec["arrangement"] == [list(b) for b in arrangements[winner]]
        assert rec["candidates"] == pytest.approx([h["accuracy"] for h in head], abs=0)
        # The score is the winner's accuracy on all 240 images, exactly as an unscreened pass gives it.
        assert rec["score"] == pytest.approx(whole[winner]["accuracy"], abs=1e-12)
        assert rec["loss"] == pytest.approx(whole[winner]["loss"], rel=1e-5)
        best_whole = max(range(3), key=lambda i: (whole[i]["accuracy"], -whole[i]["loss"]))
        if best_whole == winner:
            agree += 1
            assert rec["score"] == pytest.approx(full(widths)["score"], abs=1e-12)
    assert agree >= 1


def test_without_screening_every_arrangement_sees_every_image(setup):
    _, space, _, _ = setup
    ev = evaluator(setup, 1.0)
    widths = middle_widths(space, np.random.default_rng(9))
    ev(widths)
    assert ev.images_evaluated == 3 * 240 and ev.evaluations == 3


@pytest.mark.parametrize("fraction", [0.0, -0.5, 1.5])
def test_a_bad_screen_fraction_is_named(setup, fraction):
    with pytest.raises(ValueError, match=rf"screen_fraction must be in \(0, 1\].*{fraction}"):
        evaluator(setup, fraction)
    section = search_section()
    section.screen_fraction = fraction
    with pytest.raises(ConfigError, match=rf"config.search.screen_fraction={fraction}"):
        validate_search(section)


def test_screening_composes_with_equal_scoring(setup):
    # compare's rule (K evaluations, evaluation i on calibration set i) screened alike: K x screen + the rest.
    supernet, space, calibration, validation = setup
    ev = SupernetEvaluator(supernet, space, calibration, validation, num_candidates=2, seed=1, scoring="equal",
                           screen_fraction=0.5)
    rec = ev(middle_widths(space, np.random.default_rng(4)))
    assert ev.evaluations == 3 and ev.images_evaluated == 2 * 120 + 120
    assert len(rec["candidates"]) == 2 and rec["score"] >= 0
