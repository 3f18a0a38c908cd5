"""Config schema shared by every cafe-tf program, and its validation.

Experiments are Python files in ``configs/`` whose ``get_config()`` returns a locked
``ml_collections.ConfigDict``; programs load them with ``config_flags.DEFINE_config_file`` so that
``--config.train.epochs=2`` overrides a field, and an unknown key or a value of the wrong type is
refused with the key's name (ConfigDict's own checks, because the config is locked). The shared
defaults live in :func:`base_config`; a config file changes only what differs::

    from cafe_tf import config as cfg

    def get_config():
        c = cfg.base_config()
        c.data.name = "cifar10"
        return cfg.lock(c)

Sections (later stages add their own, e.g. ``supernet``, ``search``, ``dagger``, ``deploy``):

* ``data``: which dataset and how it is fed (:mod:`cafe_tf.data`).
* ``model``: which registered model (:mod:`cafe_tf.models`), its width multiplier, and input shape /
  class-count overrides (0 / empty = take them from the dataset).
* ``train``: the standard training recipe (:mod:`cafe_tf.training.standard`).
* ``distribute``: the ``tf.distribute`` strategy (:mod:`cafe_tf.distribute`).

Unset values use the field's type's empty value (``""``, ``0``, ``()``) rather than ``None``: a
``None`` field would accept any type on the command line and defeat the type check.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from typing import Any

import ml_collections

OPTIMIZERS = ("sgd", "adam")
SCHEDULES = ("cosine", "constant", "step")
# Every training loop runs each of these (cafe_tf.training.kernel builds the model under the policy and
# scales the loss for float16), so validating against this list refuses exactly what they refuse.
MIXED_PRECISION = ("none", "mixed_float16", "mixed_bfloat16")
STRATEGIES = ("default", "mirrored", "multi_worker", "tpu")


class ConfigError(ValueError):
    """A config value is invalid; the message names the key, the value and what is valid."""


def base_config() -> ml_collections.ConfigDict:
    """The shared defaults of every experiment (unlocked, so a config file can add sections)."""
    c = ml_collections.ConfigDict()
    c.data = ml_collections.ConfigDict(
        dict(
            name="fashion_mnist",  # cafe_tf.data.names(), folder:PATH or tfds:NAME[/CONFIG][:VERSION]
            data_dir="",  # "" = $CAFE_TF_DATA_DIR or ~/tensorflow_datasets
            download=False,  # never touch the network unless asked
            batch_size=128,  # global batch, split over replicas
            eval_batch_size=0,  # 0 = batch_size
            validation_size=-1,  # held out from train; -1 = the dataset's default
            validation_split=0.0,  # folder:/tfds:/in-memory data without a validation split: 0.0 = 0.1
            channels=0,  # 1 gray or 3 RGB (converted); 0 = the data's own
            attribute="",  # celeb_a only: one attribute name, "" = all 40 (multi-label)
            image_size=0,  # 0 = the dataset's native / default size
            augment="auto",  # auto | none | flip | crop | crop_flip | inception
            shuffle_buffer=10_000,
            cache=False,  # keep decoded training images in memory (small datasets only)
            max_train_examples=0,  # > 0: train on the first N training examples (smoke runs)
            max_eval_examples=0,  # > 0: evaluate on the first N examples of each eval split
        )
    )
    c.model = ml_collections.ConfigDict(
        dict(
            name="cnn_small",  # cafe_tf.models.names(), a path ending in .keras, or keras.applications.<Name>
            width_mult=1.0,  # keras.applications: the family's alpha (MobileNets only)
            input_shape=(),  # () = the pipeline's output shape
            num_classes=0,  # 0 = the dataset's
            input_scaling="mean_std",  # mean_std | unit ([0, 1]) | raw (0..255) | model (its own Rescaling)
            boundaries=(),  # layer names whose channels are kept whole (fixed-width boundaries)
            bn_momentum=0.0,  # > 0: set every BatchNormalization's momentum (keras.applications use 0.999)
        )
    )
    c.train = ml_collections.ConfigDict(
        dict(
            epochs=5,
            optimizer="sgd",  # sgd | adam
            lr=0.1,  # peak learning rate for the global batch
            momentum=0.9,  # sgd only
            nesterov=False,  # sgd only
            weight_decay=5e-4,  # L2 on conv / dense kernels, added to the loss (see standard.py)
            schedule="cosine",  # cosine | constant | step
            warmup_epochs=0.0,  # linear warm-up from 0 to lr
            step_epochs=(),  # step schedule: epochs at which lr is multiplied by step_gamma
            step_gamma=0.1,
            label_smoothing=0.0,
            distill_weight=0.0,  # w: loss = (1 - w) CE + w T^2 KL(teacher || model) at temperature T; needs a teacher
            # (the prune program's finetune stage gives the unpruned model to every method alike); 0 = plain CE
            distill_temperature=4.0,
            mixed_precision="none",  # none | mixed_float16 | mixed_bfloat16
            log_every=50,  # steps between log lines and TensorBoard points
            checkpoint_every=0,  # steps between checkpoints; 0 = at each epoch end only
            keep_checkpoints=3,
            eval_splits=("validation", "test"),
            eval_every=1,  # epochs between evaluations; 0 = the last epoch only (the last is always evaluated)
            seed=0,
            deterministic=False,  # tf.config.experimental.enable_op_determinism (slower)
            jit_compile=False,  # XLA-compile the training step (benchmarks/step_speed.py: slower on CPU here)
        )
    )
    c.distribute = ml_collections.ConfigDict(
        dict(
            strategy="default",  # default | mirrored | multi_worker | tpu
            devices=(),  # mirrored: device names, () = all GPUs (or the CPU)
            tpu="",  # tpu: TPU name or grpc:// address, "" = the local / environment TPU
        )
    )
    return c


def lock(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
    """Locks ``config`` so a misspelt key fails (on assignment and on the command line); returns it."""
    config.lock()
    return config


def sibling_config(config_file: str, name: str, *args: Any) -> ml_collections.ConfigDict:
    """``get_config(*args)`` of the config file ``name`` in the folder of ``config_file`` (pass ``__file__``).

    Config files are loaded by path, not imported as a package, so a config that differs from
    another in a few keys loads that one the same way and changes only those keys (it is locked).
    """
    import importlib.util
    import os

    path = os.path.join(os.path.dirname(os.path.abspath(config_file)), name)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"config {path!r} does not exist")
    spec = importlib.util.spec_from_file_location(f"cafe_tf_config_{os.path.splitext(name)[0]}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.get_config(*args)


def to_dict(config: ml_collections.ConfigDict) -> dict[str, Any]:
    """A JSON-able plain-dict copy of ``config`` (tuples become lists), for artifacts."""
    return _jsonable(config.to_dict())


def _jsonable(value: Any) -> Any:
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    return value


# --------------------------------------------------------------------------------------------
# Validation: ConfigDict checks types; these check values, naming the key and what is valid.


def _choice(key: str, value: Any, valid: Iterable[Any]) -> None:
    valid = list(valid)
    if value not in valid:
        raise ConfigError(f"config.{key}={value!r} is invalid; valid values: {valid}")


def _check(key: str, value: Any, ok: bool, requirement: str) -> None:
    if not ok:
        raise ConfigError(f"config.{key}={value!r} is invalid; it must be {requirement}")


def validate_data(data: ml_collections.ConfigDict) -> None:
    """Checks the ``data`` section (dataset names, sizes, augmentation)."""
    from cafe_tf import data as data_lib

    try:
        data_lib.check_name(data.name)
    except data_lib.DatasetError as e:
        raise ConfigError(f"config.data.name={data.name!r} is invalid: {e}") from None
    _check("data.validation_split", data.get("validation_split", 0.0),
           0.0 <= data.get("validation_split", 0.0) < 1.0, "in [0, 1) (0 = 0.1, or a built-in dataset's own)")
    _choice("data.channels", data.get("channels", 0), (0, 1, 3))
    _check("data.batch_size", data.batch_size, data.batch_size >= 1, ">= 1")
    _check("data.eval_batch_size", data.eval_batch_size, data.eval_batch_size >= 0, ">= 0 (0 = batch_size)")
    _check("data.validation_size", data.validation_size, data.validation_size >= -1,
           ">= 1, or -1 for the dataset's default")
    _check("data.image_size", data.image_size, data.image_size >= 0, ">= 0 (0 = native size)")
    _choice("data.augment", data.augment, data_lib.AUGMENTATIONS)
    _check("data.shuffle_buffer", data.shuffle_buffer, data.shuffle_buffer >= 1, ">= 1")
    _check("data.max_train_examples", data.max_train_examples, data.max_train_examples >= 0, ">= 0 (0 = all)")
    _check("data.max_eval_examples", data.max_eval_examples, data.max_eval_examples >= 0, ">= 0 (0 = all)")
    if data.attribute and data.name != "celeb_a":
        raise ConfigError(f"config.data.attribute={data.attribute!r} applies to celeb_a only, not to {data.name!r}")


def validate_model(model: ml_collections.ConfigDict) -> None:
    """Checks the ``model`` section (model name or file, width multiplier, overrides, input scaling).

    A ``.keras`` file's content is checked when the model is built (cafe_tf.models.source), not here.
    """
    import os

    from cafe_tf.models import source

    try:
        source.kind_of(model.name)
    except source.ModelSourceError as e:
        raise ConfigError(f"config.model.name={model.name!r} is invalid: {e}") from None
    if model.name.endswith(".keras") and not os.path.isfile(os.path.expanduser(model.name)):
        raise ConfigError(f"config.model.name={model.name!r} is invalid: no such .keras file")
    _choice("model.input_scaling", model.get("input_scaling", "mean_std"), source.INPUT_SCALINGS)
    _check("model.width_mult", model.width_mult, model.width_mult > 0, "> 0")
    _check("model.bn_momentum", model.get("bn_momentum", 0.0), 0.0 <= model.get("bn_momentum", 0.0) < 1.0,
           "in [0, 1) (0 keeps the model's own)")
    boundaries = tuple(model.get("boundaries", ()))
    _check("model.boundaries", boundaries, all(isinstance(b, str) and b for b in boundaries),
           "a tuple of layer names, e.g. ('head_conv', 'se_reduce')")
    shape = tuple(model.input_shape)
    _check("model.input_shape", shape, shape == () or (len(shape) == 3 and all(int(d) > 0 for d in shape)),
           "() or (height, width, channels) with positive sizes")
    _check("model.num_classes", model.num_classes, model.num_classes >= 0, ">= 0 (0 = the dataset's)")


def validate_train(train: ml_collections.ConfigDict) -> None:
    """Checks the ``train`` section (recipe values and their ranges)."""
    _check("train.epochs", train.epochs, train.epochs >= 1, ">= 1")
    _choice("train.optimizer", train.optimizer, OPTIMIZERS)
    _check("train.lr", train.lr, train.lr > 0, "> 0")
    _check("train.momentum", train.momentum, 0 <= train.momentum < 1, "in [0, 1)")
    _check("train.weight_decay", train.weight_decay, train.weight_decay >= 0, ">= 0")
    _choice("train.schedule", train.schedule, SCHEDULES)
    _check("train.warmup_epochs", train.warmup_epochs, 0 <= train.warmup_epochs < train.epochs,
           f">= 0 and below train.epochs ({train.epochs})")
    steps = tuple(train.step_epochs)
    _check("train.step_epochs", steps, all(0 < e < train.epochs for e in steps) and list(steps) == sorted(steps),
           f"increasing epochs between 0 and train.epochs ({train.epochs}), exclusive")
    if train.schedule == "step" and not steps:
        raise ConfigError("config.train.step_epochs=() is invalid with train.schedule='step'; give e.g. (100, 150)")
    _check("train.step_gamma", train.step_gamma, 0 < train.step_gamma <= 1, "in (0, 1]")
    _check("train.label_smoothing", train.label_smoothing, 0 <= train.label_smoothing < 1, "in [0, 1)")
    _check("train.distill_weight", train.get("distill_weight", 0.0), 0 <= train.get("distill_weight", 0.0) <= 1,
           "in [0, 1] (0 = no distillation)")
    _check("train.distill_temperature", train.get("distill_temperature", 1.0), train.get("distill_temperature", 1.0) > 0,
           "> 0")
    _choice("train.mixed_precision", train.mixed_precision, MIXED_PRECISION)
    _check("train.log_every", train.log_every, train.log_every >= 1, ">= 1")
    _check("train.checkpoint_every", train.checkpoint_every, train.checkpoint_every >= 0, ">= 0 (0 = each epoch end)")
    _check("train.keep_checkpoints", train.keep_checkpoints, train.keep_checkpoints >= 1, ">= 1")
    for split in train.eval_splits:
        _choice("train.eval_splits", split, ("train", "validation", "train_full", "test"))
    _check("train.eval_every", train.eval_every, train.eval_every >= 0, ">= 0 (0 = the last epoch only)")
    _choice("train.jit_compile", train.jit_compile, (False, True))


def validate_distribute(distribute: ml_collections.ConfigDict) -> None:
    """Checks the ``distribute`` section (strategy name and its options)."""
    _choice("distribute.strategy", distribute.strategy, STRATEGIES)
    if distribute.devices and distribute.strategy != "mirrored":
        raise ConfigError(
            f"config.distribute.devices={tuple(distribute.devices)!r} applies to strategy 'mirrored' only, "
            f"not {distribute.strategy!r}"
        )
    if distribute.tpu and distribute.strategy != "tpu":
        raise ConfigError(f"config.distribute.tpu={distribute.tpu!r} applies to strategy 'tpu' only")


def validate_channel_multiple(section: str, value: Any) -> None:
    """Checks ``config.<section>.channel_multiple`` (an integer >= 1; 1 = off). Whether it fits every
    prunable group needs the model: the search space and the pruning stage check that before training."""
    _check(f"{section}.channel_multiple", value, isinstance(value, int) and not isinstance(value, bool) and value >= 1,
           "an integer >= 1 (1 = off; e.g. 8 so every kept width suits 8-wide SIMD kernels)")


# Section name -> validator of the sections this module defines.
VALIDATORS: dict[str, Callable[[ml_collections.ConfigDict], None]] = {
    "data": validate_data,
    "model": validate_model,
    "train": validate_train,
    "distribute": validate_distribute,
}


def validate(
    config: ml_collections.ConfigDict,
    sections: Iterable[str] | None = None,
    extra_validators: Mapping[str, Callable[[ml_collections.ConfigDict], None]] | None = None,
) -> None:
    """Validates ``sections`` of ``config`` (default: every present section that has a validator).

    Later stages pass their own sections' validators in ``extra_validators`` (e.g. ``{"search": f}``).

    Raises:
      ConfigError: naming the first bad key, its value and what would be valid.
    """
    validators = {**VALIDATORS, **(extra_validators or {})}
    if sections is None:
        sections = [s for s in validators if s in config]
    for section in sections:
        if section not in config:
            raise ConfigError(f"config has no {section!r} section; the program needs it (see cafe_tf.config.base_config)")
        if section not in validators:
            raise ConfigError(f"no validator for config section {section!r}; known: {sorted(validators)}")
        try:
            validators[section](config[section])
        except (AttributeError, KeyError) as e:
            raise ConfigError(f"config.{section} lacks a required key: {e}") from None


# --------------------------------------------------------------------------------------------
# Loading from Python: a path or a ConfigDict, then dotted overrides (the API's ``config=`` and
# ``overrides=``), with the same refusals as the programs' ``--config.<key>=`` flags.


def load_config(config: str | ml_collections.ConfigDict) -> ml_collections.ConfigDict:
    """A locked copy of ``config``: a config file's ``get_config()`` (path) or a ``ConfigDict``.

    Raises:
      ConfigError: when the path does not exist or the file has no ``get_config()``.
    """
    import copy
    import importlib.util
    import os

    if isinstance(config, ml_collections.ConfigDict):
        out = copy.deepcopy(config)
    elif isinstance(config, (str, os.PathLike)):
        path = os.path.abspath(os.path.expanduser(os.fspath(config)))
        if not os.path.isfile(path):
            raise ConfigError(f"config file {os.fspath(config)!r} does not exist; give a configs/*.py file "
                              "or an ml_collections.ConfigDict")
        name = "cafe_tf_config_" + "".join(ch if ch.isalnum() else "_" for ch in os.path.splitext(path)[0])
        spec = importlib.util.spec_from_file_location(name, path)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        if not callable(getattr(module, "get_config", None)):
            raise ConfigError(f"config file {path!r} has no get_config() function")
        out = module.get_config()
        if not isinstance(out, ml_collections.ConfigDict):
            raise ConfigError(f"config file {path!r}: get_config() returned {type(out).__name__}, "
                              "not an ml_collections.ConfigDict")
    else:
        raise ConfigError(f"config={config!r} is invalid; give a config file path or an ml_collections.ConfigDict")
    return lock(out)


def apply_overrides(config: ml_collections.ConfigDict, overrides: Mapping[str, Any] | None) -> ml_collections.ConfigDict:
    """Sets each dotted key of ``overrides`` (``{"supernet.epochs": 1}``) in ``config``; returns it.

    The keys are those of the programs' ``--config.`` flags. A list given for a tuple field becomes a
    tuple; an int for a float field is taken as ConfigDict takes it on the command line.

    Raises:
      ConfigError: naming a key the config lacks (with the keys its section has) or a value of the
        wrong type (with the type the key holds).
    """
    for key, value in (overrides or {}).items():
        if not isinstance(key, str) or not key:
            raise ConfigError(f"override key {key!r} is invalid; give a dotted config key such as 'train.epochs'")
        parts = key.split(".")
        node = config
        for i, part in enumerate(parts[:-1]):
            child = node.get(part) if isinstance(node, ml_collections.ConfigDict) else None
            if not isinstance(child, ml_collections.ConfigDict):
                where = ".".join(parts[:i]) or "the config"
                known = sorted(node.keys()) if isinstance(node, ml_collections.ConfigDict) else []
                raise ConfigError(f"override {key!r}: {where} has no section {part!r}; known: {known}")
            node = child
        leaf = parts[-1]
        if leaf not in node:
            section = ".".join(parts[:-1]) or "the config"
            raise ConfigError(f"override {key!r}: unknown key {leaf!r} in {section}; known keys: {sorted(node.keys())}")
        current = node[leaf]
        if isinstance(current, ml_collections.ConfigDict):
            raise ConfigError(f"override {key!r} names a section; give one of its keys: {sorted(current.keys())}")
        if isinstance(current, tuple) and isinstance(value, list):
            value = tuple(value)
        if isinstance(current, bool) != isinstance(value, bool) and current is not None:
            raise ConfigError(f"override {key!r}={value!r} has the wrong type: {type(value).__name__}, "
                              f"but the key holds {type(current).__name__}")
        try:
            node[leaf] = value
        except (TypeError, ValueError) as e:
            raise ConfigError(f"override {key!r}={value!r} has the wrong type: {type(value).__name__}, but the key "
                              f"holds {type(current).__name__} ({e})") from None
    return config
