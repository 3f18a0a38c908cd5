"""Latency-table calibration subnets follow the search's channel_multiple (issue 15, item 1)."""

import keras
import numpy as np
import pytest

from cafe_tf import models
from deploy import latency_table
from deploy.errors import UsageError


def _conv_widths(model):
    return [layer.filters for layer in model.layers if isinstance(layer, keras.layers.Conv2D)]


def test_random_subnets_widths_are_multiples_or_full():
    model = models.build("resnet20", input_shape=(16, 16, 3), num_classes=5)
    full = set(_conv_widths(model))
    fractions = (0.3, 0.55, 0.9, 1.0)
    plain = latency_table.random_subnets(model, 3, np.random.default_rng(0), fractions)
    assert any(w % 8 for m in plain for w in _conv_widths(m))  # without the multiple, odd widths occur
    rounded = latency_table.random_subnets(model, 3, np.random.default_rng(0), fractions, channel_multiple=8)
    widths = [w for m in rounded for w in _conv_widths(m)]
    assert all(w % 8 == 0 or w in full for w in widths) and min(widths) >= 8
    with pytest.raises(UsageError, match=r"channel_multiple=32 is larger than prunable group .*\(16 channels\)"):
        latency_table.random_subnets(model, 1, np.random.default_rng(0), fractions, channel_multiple=32)
