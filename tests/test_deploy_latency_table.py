"""deploy.latency_table: layer configurations, interpolation, the additive model, the file format."""

import keras
import numpy as np
import pytest

from cafe_tf.io import ArtifactError, write_json
from deploy import latency_table as lt
from deploy.errors import DeployError

L = keras.layers


def net(width=8, name="net") -> keras.Model:
    x = inputs = keras.Input((16, 16, 3), name="image")
    x = L.Conv2D(width, 3, padding="same", use_bias=False, name="c1")(x)
    x = L.BatchNormalization(name="bn1")(x)
    x = L.ReLU(name="r1")(x)
    y = L.Conv2D(width, 3, padding="same", name="c2")(x)
    y = L.BatchNormalization(name="bn2")(y)
    x = L.Add(name="add")([x, y])
    x = L.ReLU(name="r2")(x)
    x = L.DepthwiseConv2D(3, strides=2, padding="same", name="dw")(x)
    x = L.Activation("swish", name="swish")(x)
    x = L.MaxPooling2D(2, name="pool")(x)
    x = L.GlobalAveragePooling2D(name="gap")(x)
    return keras.Model(inputs, L.Dense(4, name="logits")(x), name=name)


def test_layer_keys_follow_tflite_fusion():
    keys = lt.layer_keys(net())
    assert [k.describe() for k in keys] == [
        "CONV_2D k3x3 s1 16x16 3->8",
        "CONV_2D k3x3 s1 16x16 8->8",
        "ADD 16x16 8->8",  # BN folded into the convs, ReLU fused into conv / add: no entries of their own
        "DEPTHWISE_CONV_2D k3x3 s2 16x16 8->8",
        "ACTIVATION 8x8 8->8 [activation=silu]",  # swish (silu) is not fused
        "MAX_POOL_2D k2x2 s2 8x8 8->8",
        "MEAN 4x4 8->8",
        "FULLY_CONNECTED 1x1 8->4",
    ]
    conv = keys[1]
    assert conv.macs() == 16 * 16 * 9 * 8 * 8
    assert lt.LayerKey.from_dict(conv.to_dict()) == conv


def test_every_key_builds_a_one_layer_model():
    for key in lt.layer_keys(net()):
        model = lt.build_layer_model(key)
        assert len(model.layers) == 2, key
        out = model.outputs[0].shape
        assert int(out[-1]) == key.cout, key


def _key(cin, cout, op="CONV_2D"):
    return lt.LayerKey(op, (3, 3), (1, 1), "same", 16, 16, cin, cout)


def test_interpolation_within_a_group_and_by_macs():
    true_ms = lambda cin, cout: 0.01 + 0.0004 * cin * cout  # noqa: E731  (fixed cost + throughput)
    entries = {_key(a, b): true_ms(a, b) for a in (8, 16, 32) for b in (8, 16, 32)}
    table = lt.LatencyTable(entries)
    assert table.layer_ms(_key(16, 16)) == entries[_key(16, 16)]  # measured
    assert table.layer_ms(_key(24, 12)) == pytest.approx(true_ms(24, 12), rel=1e-6)  # a line against MACs
    assert table.layer_ms(_key(64, 48)) == pytest.approx(true_ms(64, 48), rel=1e-6)  # also beyond the grid
    single = lt.LatencyTable({_key(16, 16): 0.1})
    assert single.layer_ms(_key(32, 16)) == pytest.approx(0.2)  # one point: scaled by MACs
    adds = {lt.LayerKey("ADD", (1, 1), (1, 1), "", 16, 16, c, c): 0.001 * c for c in (8, 16, 32)}
    table = lt.LatencyTable({**entries, **adds})
    assert table.layer_ms(lt.LayerKey("ADD", (1, 1), (1, 1), "", 16, 16, 24, 24)) == pytest.approx(0.024)
    assert table.layer_ms(lt.LayerKey("ADD", (1, 1), (1, 1), "", 16, 16, 48, 48)) == pytest.approx(0.048)
    other_size = lt.LayerKey("CONV_2D", (3, 3), (1, 1), "same", 8, 8, 16, 16)  # no group: MACs-linear over the op
    assert 0 < table.layer_ms(other_size) < table.layer_ms(_key(16, 16))
    with pytest.raises(DeployError, match="no measurement of op TRANSPOSE_CONV"):
        table.layer_ms(lt.LayerKey("TRANSPOSE_CONV", (3, 3), (2, 2), "same", 8, 8, 4, 4))


def test_fit_additive_recovers_constant_and_scale():
    sums = np.array([1.0, 2.0, 3.0, 5.0])
    constant, scale = lt.fit_additive(sums, 0.2 + 1.3 * sums)
    assert constant == pytest.approx(0.2) and scale == pytest.approx(1.3)
    assert lt.fit_additive([2.0], [3.0]) == (0.0, pytest.approx(1.5))


def test_save_load_round_trip_and_validation(tmp_path):
    entries = {k: 0.01 * (i + 1) for i, k in enumerate(lt.layer_keys(net()))}
    table = lt.LatencyTable(entries, constant_ms=0.05, scale=1.1, info={"target": "host", "quant": "fp32", "threads": 1,
                                                                   "method": "isolated", "model_fingerprint": lt.model_fingerprint(net())})
    path = tmp_path / "table.json"
    table.save(str(path))
    back = lt.load(str(path))
    assert back.entries == table.entries and (back.constant_ms, back.scale) == (0.05, 1.1)
    model = net()
    assert back.predict_ms(model) == pytest.approx(0.05 + 1.1 * sum(entries.values()))
    assert back.within_budget(model, 10.0) and not back.within_budget(model, 0.01)
    assert [row["measured"] for row in back.breakdown(model)] == [True] * len(entries)
    bad = tmp_path / "bad.json"
    write_json(str(bad), {"schema": "latency_table", "schema_version": lt.VERSION, "target": "host", "quant": "fp32",
                          "threads": 1, "method": "isolated", "model_fingerprint": "sha256:0",
                          "entries": [{"op": "ADD", "kernel": [1, 1], "stride": [1, 1], "in_hw": [4, 4], "cin": 2, "cout": 2, "ms": -1}],
                          "model": {"constant_ms": 0.0, "scale": 1.0}})
    with pytest.raises(ArtifactError, match="entry 0 has ms -1"):
        lt.load(str(bad))


def test_build_table_predicts_held_out_subnets(tmp_path):
    """A real (small) measurement on the host: per-layer table, additive fit, held-out report."""
    model = net(width=16, name="base")
    table = lt.build_table(model, calibration_subnets=3, holdout_subnets=3, fractions=(0.5, 1.0), rounds=2)
    held = table.info["holdout"]
    assert held["subnets"] == 3 and len(held["rows"]) == 3
    for row in held["rows"]:
        assert row["measured_ms"] > 0 and row["predicted_ms"] > 0
    # Timings on a shared 2-core machine are noisy; the +-10% figure is reported by the program,
    # here the predictor only has to be in the right range.
    assert held["mean_abs_error_pct"] < 50, held
    path = tmp_path / "t.json"
    table.save(str(path))
    loaded = lt.load(str(path))
    assert loaded.info["source"]["model"] == "base" and loaded.info["holdout"]["subnets"] == 3
    assert loaded.predict_ms(model) == pytest.approx(table.predict_ms(model))


# ---------------------------------------------------------------------------- prediction from widths


def _table_for(space, fractions=(1.0, 0.5, 0.25)):
    """A table measured (synthetically) on uniform subnets of ``space``: other widths are interpolated."""
    from cafe_tf import surgery

    entries = {}
    for fraction in fractions:
        sub = surgery.extract(space.graph.model, space.channels(space.fixed(space.uniform_widths(fraction))),
                              graph=space.graph, copy_weights=False)
        for key in lt.layer_keys(sub):  # a fixed cost, a MACs slope and a wiggle the line fit cannot absorb
            entries[key] = 1e-3 + 1e-6 * key.macs() + 1e-4 * (1 + np.sin(key.cin * 7 + key.cout))
    return lt.LatencyTable(entries, constant_ms=0.05, scale=1.1)


@pytest.mark.parametrize("name, shape, count", [
    ("resnet20", (16, 16, 3), 6),
    ("mobilenet_v2", (32, 32, 3), 3),
    ("coupling_zoo", None, 4),
    ("coupling_zoo_flatten", None, 4),
])
def test_predict_widths_ms_equals_predict_ms_of_the_extracted_model(name, shape, count):
    from cafe_tf import models, surgery
    from cafe_tf.graph import ChannelGraph
    from cafe_tf.space import SearchSpace
    from toy_models import coupling_zoo

    model = coupling_zoo(flatten=name.endswith("flatten")) if name.startswith("coupling_zoo") else \
        models.build(name, input_shape=shape)
    space = SearchSpace(ChannelGraph.from_model(model))
    table = _table_for(space)
    rng = np.random.default_rng(0)
    widths = np.concatenate([space.sample_widths(rng, count), [np.ones_like(space.num_bins), space.num_bins]])
    fast = table.predict_widths_ms(space, widths)
    assert fast.shape == (len(widths),)
    slow = [table.predict_ms(surgery.extract(model, space.channels(space.fixed(w)), graph=space.graph, copy_weights=False))
            for w in widths]
    # Both paths look up the same layer latencies and add them in model order: equal to the bit in
    # practice; the tolerance only allows for a Keras release listing layers in another order.
    np.testing.assert_allclose(fast, slow, rtol=1e-12, atol=0)
    assert len(set(np.round(fast, 9))) > 2  # the widths matter (interpolated entries included)
    one = table.predict_widths_ms(space, widths[0])  # one assignment: a batch of one
    assert one.shape == (1,) and one[0] == fast[0]


def test_predict_widths_ms_checks_widths_and_defers_width_keyed_layers():
    from cafe_tf.graph import ChannelGraph
    from cafe_tf.space import SearchSpace

    space = SearchSpace(ChannelGraph.from_model(net(width=8)))
    table = _table_for(space, fractions=(1.0, 0.5))
    full = space.cost.full_widths
    with pytest.raises(ValueError, match="must lie in 1..each group's size"):
        table.predict_channel_widths_ms(space.graph, (full + 1)[None])
    with pytest.raises(ValueError, match=r"shape \[N, "):
        table.predict_channel_widths_ms(space.graph, full[None, :-1])
    # A Dense layer on a feature map is a FULLY_CONNECTED over its positions: the plan follows it too.
    x = inputs = keras.Input((8, 8, 3), name="image")
    x = L.Conv2D(8, 3, padding="same", name="c1")(x)
    x = L.Dense(6, activation="relu", name="pointwise")(x)
    x = L.GlobalAveragePooling2D(name="gap")(x)
    model = keras.Model(inputs, L.Dense(4, name="logits")(x))
    graph = ChannelGraph.from_model(model)
    assert lt.layer_keys(model)[1].describe() == "FULLY_CONNECTED 8x8 8->6"
    assert lt.layer_keys(model)[1].macs() == 8 * 8 * 8 * 6
    planned = table.predict_channel_widths_ms(graph, graph.full_widths()[None])
    assert planned.shape == (1,) and planned[0] == pytest.approx(table.predict_ms(model), rel=1e-12)
