"""The public Python API: a model and data in memory in, a slimmer model (or a file) out.

Every function takes ``config=`` (a config file path or an ``ml_collections.ConfigDict``) and
``overrides=`` (dotted keys, the same as the programs' ``--config.`` flags). Precedence: keyword
arguments, then ``overrides``, then the config. Without ``config``, :func:`train` and
:func:`search_widths` start from ``configs/fashion_mnist_resnet20.py``'s recipe and :func:`prune`
from ``configs/fashion_mnist_resnet20_dagger.py``'s (read from the repository's ``configs/``
folder; a package installed without it needs ``config=``).

The model and data given replace ``config.model`` and ``config.data``. A model in memory is saved
into the workdir (``input_model.keras``, its fingerprint recorded in ``widths.json``), so a
program resumes the run with ``--config.model.name=<workdir>/input_model.keras``; ``folder:``,
``tfds:`` and built-in data are recorded by name too (arrays and ``tf.data`` cannot be resumed
from a program). Nothing here reads flags or global state.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping, Sequence
from typing import Any

import keras
import ml_collections

from cafe_tf import config as config_lib
from cafe_tf.config import ConfigError

SEARCH_CONFIG = "fashion_mnist_resnet20.py"
PRUNE_CONFIG = "fashion_mnist_resnet20_dagger.py"

ModelLike = Any  # keras.Model | str (a .keras path, "keras.applications.<Name>" or a registry name)
ConfigLike = Any  # str | os.PathLike | ml_collections.ConfigDict | None


# --------------------------------------------------------------------------------------------
# Result types


@dataclasses.dataclass(frozen=True)
class Profile:
    """MACs, parameters and channel groups of a model (what ``cafe_tf.flops`` / ``cafe_tf.check`` print)."""

    macs: int
    params: int
    groups: tuple[Mapping[str, Any], ...]  # id, name, size, prunable, reason, producers

    @property
    def prunable_groups(self) -> tuple[Mapping[str, Any], ...]:
        """The groups whose channels can be removed."""
        return tuple(g for g in self.groups if g["prunable"])

    def __str__(self) -> str:
        return (f"{self.macs:,} MACs, {self.params:,} params, {len(self.prunable_groups)} prunable channel groups "
                f"of {len(self.groups)}")


@dataclasses.dataclass(frozen=True)
class TrainResult:
    """A model trained by the standard loop, and its metrics (``<workdir>/metrics.json``)."""

    model: keras.Model
    metrics: Mapping[str, Any]
    workdir: str


@dataclasses.dataclass(frozen=True)
class SearchResult:
    """The widths a search chose, their cost and supernet score, and the way to the plain model."""

    widths: dict[str, int]  # prunable group name -> kept channels
    macs: int
    params: int
    score: float  # validation accuracy of the supernet at these widths (BN recalibrated)
    record: Mapping[str, Any]  # widths.json's record
    workdir: str

    def model(self) -> keras.Model:
        """The plain ``keras.Model`` at these widths, carrying the supernet's weights (retrain or fine-tune it)."""
        from cafe_tf.training import subnet

        return subnet.build_subnet(os.path.join(self.workdir, "widths.json"),
                                   init_from_supernet=os.path.join(self.workdir, "supernet.keras"))

    def save(self, path: str | os.PathLike) -> str:
        """Writes this result's ``widths.json`` to ``path`` (atomically); returns the path."""
        from cafe_tf import io

        with open(os.path.join(self.workdir, "widths.json"), "rb") as f:
            content = f.read()
        path = os.fspath(path)
        with io.atomic_path(path) as tmp, open(tmp, "wb") as f:
            f.write(content)
        return path


@dataclasses.dataclass(frozen=True)
class PruneResult:
    """The pruned, fine-tuned model, its cost, and the run's report."""

    model: keras.Model
    macs: int
    params: int
    report: str  # <workdir>/report.md
    summary: Mapping[str, Any]  # <workdir>/summary.json


@dataclasses.dataclass(frozen=True)
class ExportResult:
    """A written ``.tflite`` and its parity with the Keras model on validation images."""

    path: str
    size_bytes: int
    agreement: float | None  # top-1 agreement of LiteRT with Keras; None without data
    max_abs_diff: float | None  # of the outputs; None without data
    quantization: str
    verify: Mapping[str, Any] | None = None  # deploy.verify's report


@dataclasses.dataclass(frozen=True)
class BenchmarkResult:
    """Latency of a ``.tflite`` on a target, and the CPU it ran on."""

    p50_ms: float
    p90_ms: float
    cpu: str
    cpu_features: Mapping[str, bool]
    record: Mapping[str, Any]  # the benchmark.json payload


# --------------------------------------------------------------------------------------------
# Helpers: configs, budgets, models and data


def default_config_path(name: str) -> str:
    """The path of ``configs/<name>`` in the repository this package lives in.

    Raises:
      ConfigError: when the package is installed without the repository's ``configs/`` folder.
    """
    path = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "configs", name)
    if not os.path.isfile(path):
        raise ConfigError(f"the default recipe {path!r} is not installed with this package; pass config= "
                          f"(a config file such as configs/{name} from the cafe-tf repository, or a ConfigDict)")
    return path


def make_config(config: ConfigLike, default: str, overrides: Mapping[str, Any] | None) -> ml_collections.ConfigDict:
    """``config`` (or the default recipe ``configs/<default>``) with ``overrides`` applied, locked."""
    out = config_lib.load_config(default_config_path(default) if config is None else config)
    return config_lib.apply_overrides(out, overrides)


def resolve_budget(value: int | float | str | None, full: int, name: str) -> int:
    """An absolute budget from a number or a percentage string of ``full`` (``"50%"``); 0 for None.

    Raises:
      ConfigError: naming ``name`` and the value when it is neither.
    """
    if value is None:
        return 0
    if isinstance(value, str):
        text = value.strip()
        try:
            if not text.endswith("%"):
                raise ValueError
            pct = float(text[:-1])
        except ValueError:
            raise ConfigError(f"{name}={value!r} is invalid; give a number or a percentage of the full model "
                              "such as '50%'") from None
        if not 0 < pct <= 100:
            raise ConfigError(f"{name}={value!r} is invalid; a percentage must be in (0%, 100%]")
        return int(full * pct / 100.0)
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value <= 0:
        raise ConfigError(f"{name}={value!r} is invalid; give a positive number or a percentage such as '50%'")
    return int(value)


def _refuse_twice(name: str, value: Any, key: str, config: ml_collections.ConfigDict,
                  overrides: Mapping[str, Any] | None) -> None:
    if value is None:
        return
    section, leaf = key.split(".")
    if overrides and key in overrides:
        raise ConfigError(f"the budget is given twice: {name}={value!r} and overrides[{key!r}]={overrides[key]!r}; "
                          "give one")
    if section in config and config[section].get(leaf):
        raise ConfigError(f"the budget is given twice: {name}={value!r} and the config's {key}="
                          f"{config[section][leaf]!r}; give one (or a config without it)")


def _as_model(model: ModelLike) -> keras.Model | str:
    if isinstance(model, keras.Model):
        return model
    if isinstance(model, (str, os.PathLike)):
        return os.fspath(model)
    raise TypeError(f"model={type(model).__name__} is invalid; give a keras.Model, a .keras path or "
                    "'keras.applications.<Name>'")


def load_model(model: ModelLike, input_shape: Sequence[int] | None = None, num_classes: int | None = None) -> keras.Model:
    """A ``keras.Model`` from a model in memory, a ``.keras`` path, ``keras.applications.<Name>`` (built for
    ``input_shape`` and ``num_classes``, default 224x224x3 and 1000) or a registry name."""
    from cafe_tf.models import source as source_lib

    model = _as_model(model)
    if isinstance(model, keras.Model):
        return model
    if source_lib.kind_of(model) == "application":
        return source_lib.resolve(model, input_shape or (224, 224, 3), num_classes or 1000).build()
    return source_lib.resolve(model, input_shape, num_classes).build()


def _has_scaling(model: keras.Model) -> bool:
    from cafe_tf.models import source as source_lib

    return any(isinstance(layer, source_lib.SCALING_LAYERS) for layer in model.layers)


def _as_data(data: Any, config: ml_collections.ConfigDict) -> Any:
    """A ``Data`` (``load_data`` of a source, or the config's data when ``data`` is None)."""
    from cafe_tf import data as data_lib

    if data is None:
        return None
    if isinstance(data, data_lib.DataSource):
        return data
    if hasattr(data, "source") and hasattr(data, "info"):
        return data
    return data_lib.load_data(data, seed=int(config.train.seed))


def _prepare(model: ModelLike, data: Any, config: ml_collections.ConfigDict, workdir: str,
             overrides: Mapping[str, Any] | None) -> tuple[Any, Any]:
    """(ModelSource, Data) of the given model and data, with ``config.model`` / ``config.data`` set to them.

    Input scaling follows the model (``model`` when it has Rescaling/Normalization layers, else
    ``mean_std``) unless ``overrides`` sets ``model.input_scaling``; gray and RGB data are converted to
    the model's channels; a model whose input size or class count differs from the data's is refused.
    """
    from cafe_tf import data as data_lib
    from cafe_tf.models import source as source_lib

    data = _as_data(data, config)
    model = _as_model(model)
    scaling_given = bool(overrides and "model.input_scaling" in overrides)
    loaded = model if isinstance(model, keras.Model) else None
    if isinstance(model, str) and source_lib.kind_of(model) == "keras_file":
        loaded = source_lib.resolve(model).build()
    if loaded is not None and not scaling_given:
        config.model.input_scaling = "model" if _has_scaling(loaded) else "mean_std"
    if data is not None and not isinstance(data, data_lib.DataSource):
        if loaded is not None:
            want = tuple(int(d) for d in loaded.inputs[0].shape[1:])
            if len(want) == 3 and want[-1] != data.image_shape[-1]:
                data = data.with_channels(want[-1])
            if tuple(want[:2]) != tuple(data.image_shape[:2]):
                raise ConfigError(f"the model takes images of {want}, but the data's are {tuple(data.image_shape)}; "
                                  f"load the data with image_size={want[:2]} (load_data(..., image_size=...))")
            classes = int(loaded.outputs[0].shape[-1])
            if classes != data.num_classes:
                raise ConfigError(f"the model predicts {classes} classes, but the data has {data.num_classes} "
                                  f"({list(data.class_names)[:10]}); give a model with {data.num_classes} outputs")
        if data.source_name:
            config.data.name = data.source_name
        if data_lib.is_builtin(data.info.name):
            config.data.image_size = int(getattr(data, "image_size", None) or 0)
        elif data.image_shape[0] == data.image_shape[1]:
            config.data.image_size = int(data.image_shape[0])
        if "channels" in config.data:
            config.data.channels = int(data.image_shape[-1])
        shape, classes = tuple(data.image_shape), int(data.num_classes)
    else:
        shape, classes = None, None
    boundaries = tuple(config.model.get("boundaries", ()))
    bn_momentum = float(config.model.get("bn_momentum", 0.0))
    if isinstance(model, keras.Model):
        source = source_lib.from_keras_model(model, workdir, config.model.input_scaling, boundaries, bn_momentum)
    else:
        if shape is None and source_lib.kind_of(model) == "application":
            probe = data_lib.make_data_source(config.data, seed=0, eval_splits=(), input_scaling="mean_std")
            shape, classes = probe.image_shape, probe.info.num_classes
        source = source_lib.resolve(model, shape, classes, config.model.width_mult, config.model.input_scaling,
                                    boundaries, bn_momentum)
    config.model.name = source.spec
    config.model.input_shape = ()
    config.model.num_classes = 0
    return source, data


def _source(data: Any, config: ml_collections.ConfigDict, seed: int, eval_splits: Sequence[str], workdir: str,
            strategy: Any) -> Any:
    """The ``DataSource`` of ``data`` (or of ``config.data`` when None) for one stage."""
    from cafe_tf import data as data_lib
    from cafe_tf import distribute as distribute_lib

    drop = not distribute_lib.supports_partial_batches(strategy)
    if data is None:
        return data_lib.make_data_source(config.data, seed=seed, eval_splits=tuple(eval_splits),
                                         drop_eval_remainder=drop, input_scaling=config.model.input_scaling,
                                         workdir=workdir)
    if isinstance(data, data_lib.DataSource):
        return data
    if not data_lib.is_builtin(data.info.name):
        record = data_lib.find_data_record(workdir, data.info.name) if data.source_name else None
        if record is None:
            data_lib.write_data_record(workdir, data.info)
    return data.source(config.data, seed, eval_splits=tuple(eval_splits), drop_eval_remainder=drop,
                       input_scaling=config.model.input_scaling)


def _supernet_done(workdir: str, section: ml_collections.ConfigDict, source: Any) -> bool:
    """Whether ``workdir`` holds a finished supernet of this model and these settings (then it is not
    saved again, so the search's score cache, keyed on the supernet file's hash, stays valid)."""
    import json

    from cafe_tf import space as space_lib
    from cafe_tf.training import supernet as supernet_lib

    path = os.path.join(workdir, "supernet.json")
    if not (os.path.isfile(path) and os.path.isfile(os.path.join(workdir, "supernet.keras"))):
        return False
    record = space_lib.read_supernet(path)
    same = lambda a, b: json.dumps(a, sort_keys=True) == json.dumps(b, sort_keys=True)  # noqa: E731
    return (same(record.get("settings"), supernet_lib.settings_of(section))
            and same(record.get("model", {}).get("source"), source.record())
            and record.get("steps") == int(section.epochs) * int(record.get("steps_per_epoch", -1)))


def _validate(config: ml_collections.ConfigDict, sections: Sequence[str], extra: Mapping[str, Any]) -> None:
    config_lib.validate(config, [s for s in sections if s in config and s != "data"], extra)


# --------------------------------------------------------------------------------------------
# The API


def profile(model: ModelLike) -> Profile:
    """MACs, parameters and channel groups of ``model``.

    Args:
      model: a ``keras.Model``, a ``.keras`` path or ``keras.applications.<Name>`` (built for 224x224x3).

    Returns:
      The :class:`Profile`.

    Raises:
      ValueError: when the channel graph cannot take the model (the message names the layer).
    """
    from cafe_tf import check as check_lib

    report = check_lib.check(load_model(model))
    if not report.supported:
        raise ValueError(f"model {report.model!r} is not supported: {report.error}")
    return Profile(macs=int(report.macs), params=int(report.params), groups=tuple(report.groups))


def train(model: ModelLike, data: Any, *, workdir: str, overrides: Mapping[str, Any] | None = None,
          config: ConfigLike = None) -> TrainResult:
    """Trains ``model`` on ``data`` with the standard loop (resuming from ``workdir``'s checkpoints).

    Args:
      model: a ``keras.Model`` (trained from its current weights), a ``.keras`` path or ``keras.applications.<Name>``.
      data: a ``Data`` (``load_data``) or anything ``load_data`` takes; None: ``config.data``.
      workdir: the run's folder (``model.keras``, ``metrics.json``, checkpoints).
      overrides: dotted config keys, e.g. ``{"train.epochs": 1}``.
      config: a config path or ConfigDict (default ``configs/fashion_mnist_resnet20.py``).

    Returns:
      The :class:`TrainResult` (the trained model and its final metrics).
    """
    from cafe_tf import distribute as distribute_lib
    from cafe_tf.training import standard

    workdir = os.path.abspath(os.path.expanduser(workdir))
    cfg = make_config(config, SEARCH_CONFIG, overrides)
    source, data = _prepare(model, data, cfg, workdir, overrides)
    _validate(cfg, ("model", "train", "distribute"), {})
    strategy = distribute_lib.strategy_from_config(cfg.distribute)
    ds = _source(data, cfg, int(cfg.train.seed), tuple(cfg.train.eval_splits), workdir, strategy)
    metrics = standard.run(cfg, workdir, model_fn=source.build, strategy=strategy, data=ds)
    trained = keras.models.load_model(os.path.join(workdir, "model.keras"), compile=False)
    return TrainResult(model=trained, metrics=metrics, workdir=workdir)


def search_widths(
    model: ModelLike,
    data: Any,
    *,
    max_macs: int | float | str | None = None,
    max_params: int | float | str | None = None,
    max_latency_ms: float | None = None,
    latency_table: str | None = None,
    workdir: str,
    overrides: Mapping[str, Any] | None = None,
    config: ConfigLike = None,
) -> SearchResult:
    """Trains the supernet of ``model`` on ``data`` (resumable in ``workdir``) and searches its widths.

    Args:
      model: a ``keras.Model``, a ``.keras`` path or ``keras.applications.<Name>``. Its trained weights
        start the supernet (``supernet.init_from_model``, default True).
      data: a ``Data`` (``load_data``) or anything ``load_data`` takes; None: ``config.data``.
      max_macs: the MACs budget: a number or a percentage of the full model (``"50%"``).
      max_params: the parameter budget, likewise.
      max_latency_ms: a latency budget, predicted by ``latency_table``.
      latency_table: a file of ``deploy.latency_table``.
      workdir: the run's folder (supernet, search state, ``widths.json``).
      overrides: dotted config keys, e.g. ``{"supernet.epochs": 1, "search.population": 8}``.
      config: a config path or ConfigDict (default ``configs/fashion_mnist_resnet20.py``). With no
        budget anywhere, ``search.macs_ratio`` of the full MACs.

    Returns:
      The :class:`SearchResult`.

    Raises:
      ConfigError: a budget given twice, an unknown override key or a wrong type (by name).
    """
    from cafe_tf import distribute as distribute_lib
    from cafe_tf.search import run as search_lib
    from cafe_tf.training import supernet as supernet_lib

    workdir = os.path.abspath(os.path.expanduser(workdir))
    cfg = make_config(config, SEARCH_CONFIG, overrides)
    for name, value, key in (("max_macs", max_macs, "search.max_macs"), ("max_params", max_params, "search.max_params"),
                             ("max_latency_ms", max_latency_ms, "search.max_latency_ms")):
        _refuse_twice(name, value, key, cfg, overrides)
    source, data = _prepare(model, data, cfg, workdir, overrides)
    if max_macs is not None or max_params is not None:
        full = profile(source.build())
        if max_macs is not None:
            cfg.search.max_macs = resolve_budget(max_macs, full.macs, "max_macs")
        if max_params is not None:
            cfg.search.max_params = resolve_budget(max_params, full.params, "max_params")
    if max_latency_ms is not None:
        cfg.search.max_latency_ms = float(max_latency_ms)
    if latency_table is not None:
        cfg.search.latency_table = os.fspath(latency_table)
    _validate(cfg, ("model", "supernet", "search", "distribute"),
              {"supernet": supernet_lib.validate_supernet, "search": search_lib.validate_search})
    strategy = distribute_lib.strategy_from_config(cfg.distribute)
    if not _supernet_done(workdir, cfg.supernet, source):
        train_ds = _source(data, cfg, int(cfg.supernet.seed), tuple(cfg.supernet.eval_splits), workdir, strategy)
        supernet_lib.run(cfg, workdir, data=train_ds, source=source, strategy=strategy)
    search_ds = _source(data, cfg, int(cfg.search.seed), ("validation",), workdir, strategy)
    record = search_lib.run(cfg, workdir, data=search_ds)
    return SearchResult(widths={g["name"]: int(g["width"]) for g in record["groups"]}, macs=int(record["macs"]),
                        params=int(record["params"]), score=float(record["score"]), record=record, workdir=workdir)


def prune(
    model: ModelLike,
    data: Any,
    *,
    max_macs: int | float | str,
    method: str = "dagger",
    workdir: str,
    overrides: Mapping[str, Any] | None = None,
    config: ConfigLike = None,
) -> PruneResult:
    """Prunes a trained ``model`` to ``max_macs`` with ``method``, then fine-tunes it on ``data``.

    Args:
      model: a trained ``keras.Model`` or ``.keras`` path (``keras.applications.<Name>``: trained first
        with ``config.train``).
      data: a ``Data`` (``load_data``) or anything ``load_data`` takes; None: ``config.data``.
      max_macs: the MACs budget: a number or a percentage of the full model (``"50%"``).
      method: a ``prune.method`` value (dagger, free, l1, uniform).
      workdir: the run's folder (gates, pruned model, fine-tuning, ``report.md``).
      overrides: dotted config keys, e.g. ``{"finetune.epochs": 1, "dagger.epochs": 0.5}``.
      config: a config path or ConfigDict (default ``configs/fashion_mnist_resnet20_dagger.py``).

    Returns:
      The :class:`PruneResult`.

    Raises:
      ConfigError: a budget given twice (``prune.target_macs_ratio`` in ``overrides``), an unknown
        method, override key or wrong type (by name).
    """
    from cafe_tf import distribute as distribute_lib
    from cafe_tf.dagger import pipeline as dagger_lib

    workdir = os.path.abspath(os.path.expanduser(workdir))
    cfg = make_config(config, PRUNE_CONFIG, overrides)
    if overrides and "prune.target_macs_ratio" in overrides:
        raise ConfigError(f"the budget is given twice: max_macs={max_macs!r} and overrides['prune.target_macs_ratio']="
                          f"{overrides['prune.target_macs_ratio']!r}; give one")
    cfg.prune.method = method
    source, data = _prepare(model, data, cfg, workdir, overrides)
    full = profile(source.build())
    target = resolve_budget(max_macs, full.macs, "max_macs")
    if target > full.macs:
        raise ConfigError(f"max_macs={max_macs!r} ({target:,}) is above the model's {full.macs:,} MACs; nothing to prune")
    cfg.prune.target_macs_ratio = target / full.macs
    if source.kind == "keras_file":
        cfg.prune.pretrained = source.name
    _validate(cfg, ("model", "train", "distribute", "prune", "dagger", "finetune"), dagger_lib.extra_validators())
    strategy = distribute_lib.strategy_from_config(cfg.distribute)
    ds = _source(data, cfg, int(cfg.train.seed), tuple(cfg.finetune.eval_splits), workdir, strategy)
    summary = dagger_lib.run(cfg, workdir, data=ds)
    pruned = keras.models.load_model(os.path.join(workdir, "finetune", "model.keras"), compile=False)
    cost = profile(pruned)
    return PruneResult(model=pruned, macs=cost.macs, params=cost.params, report=os.path.join(workdir, "report.md"),
                       summary=summary)


def export_tflite(
    model: ModelLike,
    path: str | os.PathLike,
    *,
    quantization: str = "int8",
    data: Any = None,
    num_calibration: int = 200,
    num_verify: int = 500,
    config: ConfigLike = None,
) -> ExportResult:
    """Converts ``model`` to a ``.tflite`` at ``path`` and checks LiteRT against Keras on ``data``'s validation images.

    Args:
      model: a plain ``keras.Model`` or a ``.keras`` path.
      path: the ``.tflite`` to write.
      quantization: one of ``deploy.export``'s modes (fp32, fp16, dynamic, int8, qat, ...).
      data: calibration (training images) and parity (validation images); required for int8 and qat.
      num_calibration: training images that calibrate int8.
      num_verify: validation images of the parity check.
      config: a config path or ConfigDict whose ``data`` section feeds the images (batching); default
        ``configs/fashion_mnist_resnet20.py``'s.

    Returns:
      The :class:`ExportResult` (``agreement`` / ``max_abs_diff`` are None without data).

    Raises:
      ValueError: int8 or qat without data, or a mode deploy.export does not have.
    """
    import numpy as np

    from cafe_tf import data as data_lib
    from deploy import export as export_lib
    from deploy import verify as verify_lib

    keras_model = load_model(model)
    if quantization in ("int8", "qat") and data is None:
        raise ValueError(f"quantization={quantization!r} needs data= (training images calibrate it, validation "
                         "images check it); pass the Data the model was trained on, or quantization='fp32'")
    cfg = make_config(config, SEARCH_CONFIG, None)
    cfg.model.input_scaling = "model" if _has_scaling(keras_model) else "mean_std"
    representative, normalization, images, labels = None, None, None, None
    if data is not None:
        data = _as_data(data, cfg)
        if not isinstance(data, data_lib.DataSource):
            want = int(keras_model.inputs[0].shape[-1])
            if want != data.image_shape[-1]:
                data = data.with_channels(want)
        ds = (data if isinstance(data, data_lib.DataSource)
              else data.source(cfg.data, 0, eval_splits=("validation",), input_scaling=cfg.model.input_scaling))
        normalization = ds.info.normalization()
        calib = data_lib.calibration_batches(ds, num_calibration)
        representative = [np.asarray(x) for x, _ in calib]
        val = data_lib.take_batches(ds.make_eval["validation"], num_verify)
        images = np.concatenate([np.asarray(x) for x, _ in val])
        labels = np.concatenate([np.asarray(y) for _, y in val])
    out = export_lib.export_tflite(keras_model, quantization, os.fspath(path), representative_data=representative,
                                   normalization=normalization, num_calibration=num_calibration,
                                   input_scaling=cfg.model.input_scaling)
    report = None
    if images is not None:
        if labels.ndim > 1:
            labels = labels.argmax(-1)
        report = verify_lib.verify(keras_model, out.path, images, labels, quant=out.quant)
    return ExportResult(path=out.path, size_bytes=int(out.size_bytes),
                        agreement=None if report is None else float(report["top1_agreement"]),
                        max_abs_diff=None if report is None else float(report["max_abs_diff"]),
                        quantization=out.quant, verify=report)


BENCHMARK_TARGETS = ("host", "android", "coral")


def benchmark(
    path: str | os.PathLike,
    *,
    target: str = "host",
    threads: int = 1,
    runs: int = 50,
    warmup: int = 5,
    benchmark_binary: str | None = None,
    serial: str | None = None,
    config: ConfigLike = None,
) -> BenchmarkResult:
    """Times a ``.tflite`` on ``target``.

    Args:
      path: the ``.tflite`` file.
      target: ``host`` (LiteRT with XNNPACK here), ``android`` (TFLite's ``benchmark_model`` over adb)
        or ``coral`` (an Edge TPU-compiled model with the Edge TPU delegate).
      threads: interpreter threads.
      runs: timed runs.
      warmup: untimed runs first.
      benchmark_binary: android: the ``benchmark_model`` binary.
      serial: android: the device (default: the only one attached).
      config: unused by the host target; accepted like every function of the API.

    Returns:
      The :class:`BenchmarkResult` (p50 / p90 latency, the CPU and its SIMD features).

    Raises:
      ValueError: an unknown target, or a missing file.
    """
    del config
    path = os.fspath(path)
    if target not in BENCHMARK_TARGETS:
        raise ValueError(f"target={target!r} is invalid; valid targets: {list(BENCHMARK_TARGETS)}")
    if not os.path.isfile(path):
        raise ValueError(f"{path!r} does not exist; export one with cafe_tf.export_tflite")
    if target == "host":
        from deploy.benchmark.host import benchmark_host

        record = benchmark_host(path, threads=threads, runs=runs, warmup=warmup)
    elif target == "android":
        from deploy.benchmark.android import benchmark_android

        record = benchmark_android(path, benchmark_binary, serial=serial, threads=threads, runs=runs, warmup=warmup)
    else:
        from deploy.benchmark.coral import benchmark_coral

        record = benchmark_coral(path, threads=threads, runs=runs, warmup=warmup)
    env = record.get("environment", {})
    return BenchmarkResult(p50_ms=float(record["latency_ms"]["p50"]), p90_ms=float(record["latency_ms"]["p90"]),
                           cpu=str(env.get("cpu") or env.get("model") or ""),
                           cpu_features=dict(env.get("cpu_features") or {}), record=record)


__all__ = ["BenchmarkResult", "ExportResult", "Profile", "PruneResult", "SearchResult", "TrainResult", "benchmark",
           "export_tflite", "profile", "prune", "search_widths", "train"]
