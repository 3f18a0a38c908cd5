"""Every experiment config in configs/: loads as the programs load it, validates, builds; the paper's budgets.

No training and no dataset: the input shape and class count a config's data section yields come
from the table below. For the CafeNet configs (a ``search`` section) the search budget must be
feasible for the config's search space, and the MACs (``cafe_tf.flops``) must be the published
figures the config docstrings and the spec quote.
"""

from __future__ import annotations

import ast
import glob
import os

import numpy as np
import pytest
from absl import flags
from ml_collections import config_flags

from cafe_tf import config as cfg
from cafe_tf import models
from cafe_tf.flops import CostModel
from cafe_tf.graph import ChannelGraph

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIG_FILES = sorted(os.path.relpath(p, REPO) for p in glob.glob(os.path.join(REPO, "configs", "*.py")))

# Dataset -> (native (height, width) or None when it varies, channels, default training size or
# None for native, classes). CelebA with data.attribute set is a 2-class problem.
DATASETS = {
    "fashion_mnist": ((28, 28), 1, None, 10),
    "cifar10": ((32, 32), 3, None, 10),
    "cifar100": ((32, 32), 3, None, 100),
    "imagenet2012": (None, 3, 224, 1000),
    "celeb_a": ((218, 178), 3, 128, 40),
}

# The paper settings: config (with its config string) -> the plain network's MACs at width 1.0 and
# the config's input (cafe_tf.flops, exact), the published figure they round to (None: no published
# figure at this input), and the search budget in MACs.
PAPER = {
    "configs/fashion_mnist_resnet20.py": dict(macs=31_021_952, published=None, budget=15_510_976),
    "configs/fashion_mnist_resnet20_full.py": dict(macs=31_021_952, published=None, budget=15_510_976),
    "configs/cifar10_resnet20.py": dict(macs=40_813_184, published=41e6, budget=20_406_592),
    "configs/cifar10_resnet56.py": dict(macs=125_747_840, published=125e6, budget=62_873_920),
    "configs/cifar10_vgg16.py": dict(macs=313_201_664, published=313e6, budget=156_600_832),
    # mobilenet_v2_cifar (stride-1 stem and stage 2); the spec quotes no CIFAR MobileNetV2 figure
    "configs/cifar10_mobilenet_v2.py": dict(macs=87_976_448, published=None, budget=43_988_224),
    "configs/imagenet_resnet50.py:1g": dict(macs=4_089_184_256, published=4.1e9, budget=1_000_000_000),
    "configs/imagenet_resnet50.py:2g": dict(macs=4_089_184_256, published=4.1e9, budget=2_000_000_000),
    "configs/imagenet_resnet50.py:3g": dict(macs=4_089_184_256, published=4.1e9, budget=3_000_000_000),
    "configs/imagenet_mobilenet_v2.py:200m": dict(macs=300_774_272, published=300e6, budget=200_000_000),
    "configs/imagenet_mobilenet_v2.py:300m": dict(macs=300_774_272, published=300e6, budget=300_000_000),
    "configs/imagenet_efficientnet_b0.py": dict(macs=385_814_752, published=0.39e9, budget=385_814_752),
    "configs/celeba_mobilenet_v2.py": dict(macs=97_796_608, published=None, budget=48_898_304),
}


def config_strings(path: str) -> list[str]:
    """The config strings a file accepts: the keys of its module-level ``BUDGETS`` dict, else none."""
    with open(os.path.join(REPO, path), encoding="utf-8") as f:
        tree = ast.parse(f.read())
    for node in tree.body:
        if isinstance(node, ast.Assign) and any(getattr(t, "id", None) == "BUDGETS" for t in node.targets):
            return sorted(ast.literal_eval(node.value))
    return []


CONFIG_ARGS = [f"{p}:{s}" if s else p for p in CONFIG_FILES for s in (config_strings(p) or [""])]
CAFENET_ARGS = [a for a in CONFIG_ARGS if a in PAPER]


def load(arg: str, *overrides: str):
    """Parses ``--config=arg`` (``file[:string]``) and overrides as every program does (locked config)."""
    argv = ["prog", f"--config={os.path.join(REPO, arg)}", *overrides]
    fv = flags.FlagValues()
    holder = config_flags.DEFINE_config_file("config", None, "config", flag_values=fv, lock_config=True, sys_argv=argv)
    fv(argv)
    return holder.value, fv


def validators() -> dict:
    """The section validators the programs pass to cafe_tf.config.validate."""
    from cafe_tf.bundle import validate_bundle
    from cafe_tf.dagger.pipeline import extra_validators
    from cafe_tf.search.run import validate_search
    from cafe_tf.training.supernet import validate_supernet

    return {"supernet": validate_supernet, "search": validate_search, "bundle": validate_bundle, **extra_validators()}


def input_of(c) -> tuple[tuple[int, int, int], int]:
    """The (input shape, classes) the model of config ``c`` is built for, as the programs resolve them."""
    native, channels, default_size, classes = DATASETS[c.data.name]
    size = c.data.image_size or default_size
    shape = (size, size, channels) if size else (*native, channels)
    if c.data.name == "celeb_a" and c.data.attribute:
        classes = 2
    return tuple(c.model.input_shape) or shape, c.model.num_classes or classes


_GRAPHS: dict = {}


def graph_of(name: str, shape: tuple[int, int, int], classes: int, width_mult: float) -> ChannelGraph:
    """The channel graph of a built model, each distinct model built once per session."""
    key = (name, shape, classes, width_mult)
    if key not in _GRAPHS:
        model = models.build(name, input_shape=shape, num_classes=classes, width_mult=width_mult)
        assert tuple(model.inputs[0].shape[1:]) == shape
        assert model.outputs[0].shape[-1] == classes
        _GRAPHS[key] = ChannelGraph.from_model(model)
    return _GRAPHS[key]


def test_every_config_is_listed():
    assert len(CONFIG_FILES) >= 10
    # A new CafeNet config must state its published figures here.
    for arg in CONFIG_ARGS:
        c, _ = load(arg)
        if "search" in c:
            assert arg in PAPER, f"{arg} has a search section: add its MACs and budget to PAPER"


@pytest.mark.parametrize("arg", CONFIG_ARGS)
def test_config_loads_validates_and_builds(arg):
    c, _ = load(arg)
    assert c.is_locked
    if "detector" in c:  # a detection config: its program's checks, and its backbone has the pyramid levels
        from cafe_tf.detection import backbone, model, train

        cfg.validate(c, ("train",))
        train.validate(c)
        source = model.source_model(c.detector, train.image_size(c))
        levels = range(c.detector.min_level, c.detector.backbone_max_level + 1)
        assert list(backbone.find_levels(source, levels)) == [f"P{n}" for n in levels]
        return
    cfg.validate(c, extra_validators=validators())
    shape, classes = input_of(c)
    graph_of(c.model.name, shape, classes, c.model.width_mult)  # asserts the shape and the classes


@pytest.mark.parametrize("arg", CAFENET_ARGS)
def test_budget_is_feasible_and_the_published_one(arg):
    from cafe_tf.search.budget import Budget, BudgetChecker
    from cafe_tf.search.run import budget_from_section
    from cafe_tf.training.supernet import space_from_section

    c, _ = load(arg)
    expected = PAPER[arg]
    shape, classes = input_of(c)

    plain = CostModel(graph_of(c.model.name, shape, classes, 1.0)).macs()
    assert plain == expected["macs"]
    if expected["published"]:
        assert plain == pytest.approx(expected["published"], rel=0.02)

    space = space_from_section(graph_of(c.model.name, shape, classes, c.model.width_mult), c.supernet)
    budget = budget_from_section(c.search, space.cost.macs())
    assert isinstance(budget, Budget) and budget.max_macs == expected["budget"]
    assert budget.max_params is None and budget.max_latency_ms is None and budget.lower_ratio == 0.8
    checker = BudgetChecker(space, budget)
    checker.check_feasible()  # raises BudgetError naming the feasible range
    low, high = checker.feasible_range()["macs"]
    assert low < budget.lower_ratio * budget.max_macs and budget.max_macs <= high
    # The window holds sub-networks: a search has something to find.
    assert checker.sample(np.random.default_rng(0), 4)


@pytest.mark.parametrize("arg, ratio", [
    ("configs/cifar10_resnet20.py", 0.5),
    ("configs/cifar10_resnet56.py", 0.5),
    ("configs/cifar10_vgg16.py", 0.5),
    ("configs/cifar10_mobilenet_v2.py", 0.5),
    ("configs/celeba_mobilenet_v2.py", 0.5),
    ("configs/imagenet_resnet50.py:1g", 0.245),
    ("configs/imagenet_resnet50.py:2g", 0.489),
    ("configs/imagenet_resnet50.py:3g", 0.734),
    ("configs/imagenet_mobilenet_v2.py:200m", 0.665),
    ("configs/imagenet_mobilenet_v2.py:300m", 0.997),
    ("configs/imagenet_efficientnet_b0.py", 1.0),
])
def test_budget_ratio_to_the_plain_network(arg, ratio):
    expected = PAPER[arg]
    assert expected["budget"] / expected["macs"] == pytest.approx(ratio, abs=0.001)


def test_cifar_mobilenet_v2_config_uses_the_cifar_strides():
    c, _ = load("configs/cifar10_mobilenet_v2.py")
    assert c.model.name == "mobilenet_v2_cifar"
    shape, classes = input_of(c)
    model = models.build(c.model.name, input_shape=shape, num_classes=classes)
    assert model.get_layer("stem_conv").strides == (1, 1)
    assert tuple(model.get_layer("head_conv").output.shape) == (None, 4, 4, 1280)  # not 1x1


def test_resnet56_budget_is_autoslims_62_6m():
    # Spec, "Results to compare with": AutoSlim (TF2) ResNet-56 at ~50% FLOPs, 62.6 M MACs.
    assert PAPER["configs/cifar10_resnet56.py"]["budget"] == pytest.approx(62.6e6, rel=0.01)


def test_wide_supernets_hold_the_published_network():
    # MobileNetV2 and EfficientNet-B0 search a 1.5x supernet at (or under) the plain network's cost.
    for arg in ("configs/imagenet_mobilenet_v2.py", "configs/imagenet_efficientnet_b0.py"):
        c, _ = load(arg)
        assert c.model.width_mult == 1.5
        shape, classes = input_of(c)
        wide = CostModel(graph_of(c.model.name, shape, classes, 1.5)).macs()
        assert wide > 2 * CostModel(graph_of(c.model.name, shape, classes, 1.0)).macs()


def test_config_string_selects_the_budget_and_reaches_the_stages():
    c, fv = load("configs/imagenet_resnet50.py:1g", "--config.search.generations=3")
    assert c.search.max_macs == 1_000_000_000 and c.search.generations == 3
    # cafe_tf.pipeline hands this file name (config string included) on to every stage.
    assert config_flags.get_config_filename(fv["config"]).endswith("imagenet_resnet50.py:1g")
    assert load("configs/imagenet_resnet50.py")[0].search.max_macs == 2_000_000_000  # the default
    assert load("configs/imagenet_mobilenet_v2.py")[0].search.max_macs == 300_000_000
    assert load("configs/imagenet_resnet50.py", "--config.search.max_macs=1500000000")[0].search.max_macs == 1_500_000_000


def test_unknown_config_string_is_refused_with_the_valid_ones():
    with pytest.raises((ValueError, flags.Error), match=r"unknown budget '5g'.*\['1g', '2g', '3g'\]"):
        load("configs/imagenet_resnet50.py:5g")


def test_full_fashion_mnist_config_changes_only_the_lengths():
    default, _ = load("configs/fashion_mnist_resnet20.py")
    full, _ = load("configs/fashion_mnist_resnet20_full.py")

    def flat(d, prefix=""):
        out = {}
        for k, v in d.items():
            out.update(flat(v, f"{prefix}{k}.") if isinstance(v, dict) else {f"{prefix}{k}": v})
        return out

    a, b = flat(cfg.to_dict(default)), flat(cfg.to_dict(full))
    assert a.keys() == b.keys()
    changed = {k: b[k] for k in a if a[k] != b[k]}
    assert changed == {
        "supernet.epochs": 200, "supernet.checkpoint_every": 1000, "supernet.eval_examples": 0,
        "search.population": 50, "search.generations": 20, "search.parents": 10, "search.eval_examples": 0,
        "train.epochs": 200, "train.eval_every": 10,
    }


def test_paper_configs_use_the_spec_search_settings():
    for arg in CAFENET_ARGS:
        if "fashion_mnist_resnet20.py" in arg:
            continue  # the offline default is cut for time (documented in its docstring)
        s = load(arg)[0].search
        assert (s.method, s.population, s.generations, s.parents, s.mutation_prob, s.lower_ratio) == (
            "evolution", 50, 20, 10, 0.1, 0.8), arg
        assert s.eval_examples == 0, arg  # the whole validation split
