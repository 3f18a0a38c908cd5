"""Where a model comes from: a registry builder, a user's ``.keras`` file, or ``keras.applications``.

``config.model.name`` (and ``cafe_tf.flops --model``) takes one of the forms below;
``config.prune.pretrained`` takes the ``.keras`` form (the others are architectures without trained
weights, which ``model.name`` and Dagger's stage 0 train):

* a registry name (``resnet20``, see :func:`cafe_tf.models.names`);
* a path ending in ``.keras``: the user's functional model, loaded with its weights;
* ``keras.applications.<Name>`` (e.g. ``keras.applications.MobileNetV2``): built with
  ``weights=None`` (nothing downloads), ``include_top=True``, ``classes`` = the dataset's classes,
  ``classifier_activation=None`` (logits) and ``input_shape`` = the pipeline's images.
  ``config.model.width_mult`` is the family's ``alpha`` where it has one (the MobileNets).

Input size and channels (our choice): applications are built for the pipeline's image shape as it
is, channels included, since without ImageNet weights nothing needs 3 channels; Fashion-MNIST
(28x28x1) is therefore a 1-channel model. A family that refuses the size (most need 32x32 or more)
fails naming its minimum and ``config.data.image_size``, which makes the pipeline resize. A
``.keras`` file must take exactly the pipeline's images and predict the dataset's classes.

Input scaling (``config.model.input_scaling``, see ``cafe_tf.data.INPUT_SCALINGS``) is part of the
description: ``mean_std`` (the dataset's mean/std), ``unit`` ([0, 1]), ``raw`` (0..255) or
``model`` (raw 0..255 pixels into the model's own ``Rescaling``/``Normalization`` layers).
Applications with an ``include_preprocessing`` switch get those layers only under ``model``, so the
pixels are never scaled twice.

:meth:`ModelSource.record` is what ``widths.json`` stores (``model_source``), so every later stage
rebuilds the same model with :func:`from_record`; a ``.keras`` file whose content changed since is
refused, naming both SHA-256 hashes.
"""

from __future__ import annotations

import dataclasses
import inspect
import os
import re
from collections.abc import Mapping, Sequence
from typing import Any

import keras

from cafe_tf.data import INPUT_SCALINGS

KINDS = ("builtin", "keras_file", "application")
APPLICATION_PREFIX = "keras.applications."
# Layers that scale raw pixels inside a model (what input_scaling="model" relies on).
SCALING_LAYERS = (keras.layers.Rescaling, keras.layers.Normalization)


class ModelSourceError(ValueError):
    """A model name, file or record cannot be used; the message names the value and what is valid."""


def application_names() -> list[str]:
    """The ``keras.applications`` model builders (``MobileNetV2``, ``ResNet50``, ...)."""
    apps = keras.applications
    return sorted(n for n in dir(apps) if n[:1].isupper() and callable(getattr(apps, n)))


def kind_of(name: str) -> str:
    """``builtin``, ``keras_file`` or ``application`` for a ``config.model.name`` value; raises naming the valid forms."""
    from cafe_tf.models import registry

    if name in registry.names():
        return "builtin"
    if name.endswith(".keras"):
        return "keras_file"
    if name.startswith(APPLICATION_PREFIX):
        app = name[len(APPLICATION_PREFIX):]
        if app not in application_names():
            raise ModelSourceError(f"model {name!r}: keras.applications has no model {app!r}; valid names: "
                                   f"{[APPLICATION_PREFIX + n for n in application_names()]}")
        return "application"
    raise ModelSourceError(f"unknown model {name!r}; give a registry name {registry.names()}, a path ending in "
                           "'.keras', or 'keras.applications.<Name>' (e.g. 'keras.applications.MobileNetV2')")


def sha256_of(path: str) -> str:
    """Hex SHA-256 of a model file's bytes."""
    from cafe_tf.io import file_sha256

    return file_sha256(path)


def _load_keras_file(path: str) -> keras.Model:
    if not os.path.isfile(path):
        raise ModelSourceError(f"model file {path!r} does not exist; give a Keras 3 .keras file "
                               "(model.save('name.keras'))")
    try:
        return keras.saving.load_model(path, compile=False)
    except Exception as e:  # keras raises many types for a bad archive
        raise ModelSourceError(f"could not load the Keras model {path!r}: {type(e).__name__}: {e}") from None


def _shape_of(model: keras.Model) -> tuple[tuple[int | None, ...], int]:
    shape = tuple(int(d) if d is not None else None for d in model.inputs[0].shape[1:])
    return shape, int(model.outputs[0].shape[-1])


def _has_scaling_layer(model: keras.Model) -> bool:
    return any(isinstance(layer, SCALING_LAYERS) for layer in model.layers)


def _needs_scaling_layers(what: str) -> ModelSourceError:
    return ModelSourceError(f"config.model.input_scaling='model' needs the model's own Rescaling/Normalization "
                            f"layers, and {what} has none; use one of {[s for s in INPUT_SCALINGS if s != 'model']}")


@dataclasses.dataclass(frozen=True)
class ModelSource:
    """One model's provenance and the arguments that rebuild it.

    ``name`` is the registry name, the application's class name (``MobileNetV2``) or the ``.keras``
    file's absolute path; ``sha256`` is the file's content hash (``keras_file`` only).
    """

    kind: str
    name: str
    input_shape: tuple[int, int, int]
    num_classes: int
    width_mult: float = 1.0
    input_scaling: str = "mean_std"
    sha256: str = ""
    boundaries: tuple[str, ...] = ()  # layer names kept whole (config.model.boundaries)
    bn_momentum: float = 0.0  # > 0: every BatchNormalization's momentum (config.model.bn_momentum)
    fingerprint: str = ""  # keras_file saved from a model in memory: model_fingerprint() of that model

    @property
    def spec(self) -> str:
        """The value ``config.model.name`` takes for this model."""
        return APPLICATION_PREFIX + self.name if self.kind == "application" else self.name

    def application_args(self) -> dict[str, Any]:
        """The keyword arguments of the ``keras.applications`` builder (application only)."""
        params = inspect.signature(getattr(keras.applications, self.name)).parameters
        args: dict[str, Any] = {"weights": None, "include_top": True, "input_shape": list(self.input_shape),
                                "classes": int(self.num_classes)}
        if "classifier_activation" in params:
            args["classifier_activation"] = None  # logits, as our losses and surgery expect
        if "alpha" in params:
            args["alpha"] = float(self.width_mult)
        elif self.width_mult != 1.0:
            with_alpha = [n for n in application_names()
                          if "alpha" in inspect.signature(getattr(keras.applications, n)).parameters]
            raise ModelSourceError(f"config.model.width_mult={self.width_mult!r}: {self.spec} has no width "
                                   f"multiplier (alpha); use 1.0, or a family with one: {with_alpha}")
        if "include_preprocessing" in params:
            # Its own Rescaling/Normalization only when the pipeline feeds raw pixels for them.
            args["include_preprocessing"] = self.input_scaling == "model"
        elif self.input_scaling == "model" and not self.name.startswith("EfficientNetB"):
            raise _needs_scaling_layers(f"{self.spec} (its preprocess_input runs outside the model)")
        return args

    def build(self) -> keras.Model:
        """The full functional model (a ``.keras`` file is checked against its recorded hash first),
        with its fixed-width boundaries recorded on it (``cafe_tf.graph.set_boundaries``)."""
        from cafe_tf.graph import set_boundaries

        model = set_boundaries(self._build(), self.boundaries)
        if self.bn_momentum:
            # keras.applications use 0.999 (tuned for long ImageNet runs): after a few epochs their
            # moving statistics are still far from the data's, so a short run evaluates at chance.
            for layer in model.layers:
                if isinstance(layer, keras.layers.BatchNormalization):
                    layer.momentum = float(self.bn_momentum)
        return model

    def _build(self) -> keras.Model:
        from cafe_tf.models import registry

        if self.kind == "builtin":
            if self.input_scaling == "model":
                raise _needs_scaling_layers(f"registry model {self.name!r}")
            return registry.build_builtin(self.name, input_shape=self.input_shape, num_classes=self.num_classes,
                                width_mult=self.width_mult)
        if self.kind == "keras_file":
            check_unchanged(self.name, self.sha256)
            model = _load_keras_file(self.name)
            _check_file_model(model, self)
            return model
        args = self.application_args()
        try:
            return getattr(keras.applications, self.name)(**{**args, "input_shape": tuple(self.input_shape)})
        except ValueError as e:
            found = re.search(r"at least (\d+)x(\d+)", str(e))
            way_out = (f"set config.data.image_size={found.group(1)} (the pipeline resizes the images; "
                       f"cafe_tf.flops: --input_size={found.group(1)})" if found
                       else "set config.data.image_size to a size the family accepts")
            raise ModelSourceError(f"{self.spec} refuses input_shape {tuple(self.input_shape)} with "
                                   f"{self.num_classes} classes: {e}; {way_out}") from None

    def record(self) -> dict[str, Any]:
        """The JSON-able provenance ``widths.json`` stores as ``model_source``."""
        if self.kind == "keras_file":
            out: dict[str, Any] = {"kind": self.kind, "path": self.name, "sha256": self.sha256,
                                   **({"fingerprint": self.fingerprint} if self.fingerprint else {})}
        elif self.kind == "application":
            out = {"kind": self.kind, "name": self.name, "args": self.application_args()}
        else:
            out = {"kind": self.kind, "name": self.name,
                   "args": {"input_shape": list(self.input_shape), "num_classes": int(self.num_classes),
                            "width_mult": float(self.width_mult)}}
        return {**out, "input_scaling": self.input_scaling,
                **({"boundaries": list(self.boundaries)} if self.boundaries else {}),
                **({"bn_momentum": float(self.bn_momentum)} if self.bn_momentum else {})}

    def model_info(self) -> dict[str, Any]:
        """The ``model_info`` of ``space.write_widths`` / ``supernet.json``, provenance included."""
        return {"name": self.spec, "input_shape": list(self.input_shape), "num_classes": int(self.num_classes),
                "width_mult": float(self.width_mult), "source": self.record()}


def model_fingerprint(model: keras.Model) -> str:
    """Hex SHA-256 of a model in memory: its architecture (``to_json``) and every weight's bytes, in order.

    Two saves of one model give ``.keras`` files of different bytes (the archive's timestamps); this
    names the model itself, so a run resumed with the same model in memory finds it unchanged."""
    import hashlib

    import numpy as np

    h = hashlib.sha256(model.to_json().encode())
    for w in model.weights:
        value = np.ascontiguousarray(keras.ops.convert_to_numpy(w))
        h.update(f"{w.path}:{value.dtype}:{value.shape}".encode())
        h.update(value.tobytes())
    return h.hexdigest()


IN_MEMORY_FILE = "input_model.keras"


def saved_fingerprint(path: str) -> str:
    """The :func:`model_fingerprint` recorded beside a ``.keras`` file :func:`from_keras_model` saved, else ""."""
    import json

    try:
        with open(path + ".json", encoding="utf-8") as f:
            return str(json.load(f).get("fingerprint", ""))
    except (OSError, ValueError):
        return ""


def from_keras_model(model: keras.Model, workdir: str, input_scaling: str = "mean_std",
                     boundaries: Sequence[str] = (), bn_momentum: float = 0.0) -> ModelSource:
    """The :class:`ModelSource` of a model in memory, saved as ``<workdir>/input_model.keras``.

    The record names that file (path and SHA-256, so a program resumes the run with
    ``--config.model.name=<workdir>/input_model.keras``) and the model's :func:`model_fingerprint`.
    The file is written once: the same model again reuses it; another model in the same workdir is
    refused, naming both fingerprints.
    """
    import json

    from cafe_tf import io

    if not isinstance(model, keras.Model):
        raise ModelSourceError(f"expected a keras.Model, got {type(model).__name__}")
    if input_scaling not in INPUT_SCALINGS:
        raise ModelSourceError(f"input_scaling {input_scaling!r} is invalid; valid values: {list(INPUT_SCALINGS)}")
    workdir = os.path.abspath(os.path.expanduser(workdir))
    os.makedirs(workdir, exist_ok=True)
    path = os.path.join(workdir, IN_MEMORY_FILE)
    sidecar = path + ".json"
    fingerprint = model_fingerprint(model)
    if os.path.isfile(path) and os.path.isfile(sidecar):
        with open(sidecar, encoding="utf-8") as f:
            stored = json.load(f).get("fingerprint")
        if stored != fingerprint:
            raise ModelSourceError(
                f"{workdir!r} holds a run of another model (fingerprint {stored} there, {fingerprint} now, "
                f"{path!r}); use a new workdir for this model, or delete that one")
    else:
        with io.atomic_path(path) as tmp:
            model.save(tmp)
        io.write_json(sidecar, {"fingerprint": fingerprint, "path": path})
    if input_scaling == "model" and not _has_scaling_layer(model):
        raise _needs_scaling_layers(f"model {model.name!r}")
    shape, classes = _shape_of(model)
    return ModelSource("keras_file", path, tuple(shape), classes, 1.0, input_scaling, sha256_of(path),
                       tuple(boundaries), float(bn_momentum), fingerprint)


def check_unchanged(path: str, recorded_sha256: str) -> None:
    """Refuses a ``.keras`` file that is missing or whose content no longer has ``recorded_sha256``."""
    if not os.path.isfile(path):
        raise ModelSourceError(f"model file {path!r} (sha256 {recorded_sha256}) no longer exists; restore it, "
                               "or start again from a stage that reads the new file")
    now = sha256_of(path)
    if now != recorded_sha256:
        raise ModelSourceError(
            f"model file {path!r} has changed since it was recorded: sha256 {now} now, {recorded_sha256} recorded; "
            "restore that file, or rerun the pipeline from its first stage on the new one")


def _check_file_model(model: keras.Model, source: ModelSource) -> None:
    shape, classes = _shape_of(model)
    if shape != tuple(source.input_shape):
        raise ModelSourceError(f"model {source.name!r} takes inputs of shape {shape}, but the data pipeline yields "
                               f"{tuple(source.input_shape)}; set config.data.image_size to the model's size, or "
                               "give a model for these images")
    if classes != source.num_classes:
        raise ModelSourceError(f"model {source.name!r} predicts {classes} classes, but the dataset has "
                               f"{source.num_classes}")
    if source.input_scaling == "model" and not _has_scaling_layer(model):
        raise _needs_scaling_layers(repr(source.name))


def resolve(name: str, input_shape: Sequence[int] | None = None, num_classes: int | None = None,
            width_mult: float = 1.0, input_scaling: str = "mean_std", boundaries: Sequence[str] = (),
            bn_momentum: float = 0.0) -> ModelSource:
    """The :class:`ModelSource` of a ``config.model.name`` value (with ``boundaries`` and ``bn_momentum``)."""
    return dataclasses.replace(_resolve(name, input_shape, num_classes, width_mult, input_scaling),
                               boundaries=tuple(boundaries), bn_momentum=float(bn_momentum))


def _resolve(name: str, input_shape: Sequence[int] | None, num_classes: int | None, width_mult: float,
             input_scaling: str) -> ModelSource:
    """The :class:`ModelSource` of a ``config.model.name`` value, for images of ``input_shape``.

    A registry model falls back on its own default shape and classes; a ``.keras`` file on the
    file's (and when given, they must match it); an application needs both.
    """
    from cafe_tf.models import registry

    if input_scaling not in INPUT_SCALINGS:
        raise ModelSourceError(f"input_scaling {input_scaling!r} is invalid; valid values: {list(INPUT_SCALINGS)}")
    kind = kind_of(name)
    shape = tuple(int(d) for d in input_shape) if input_shape else None
    if kind == "builtin":
        if input_scaling == "model":
            raise _needs_scaling_layers(f"registry model {name!r}")
        default_shape, default_classes = registry.DEFAULT_INPUT[name]
        return ModelSource(kind, name, shape or default_shape, int(num_classes or default_classes),
                           float(width_mult), input_scaling)
    if kind == "keras_file":
        path = os.path.abspath(os.path.expanduser(name))
        if width_mult != 1.0:
            raise ModelSourceError(f"config.model.width_mult={width_mult!r} does not apply to the model file "
                                   f"{name!r}; use 1.0 (the file's widths are the full widths)")
        model = _load_keras_file(path)
        file_shape, file_classes = _shape_of(model)
        source = ModelSource(kind, path, shape or file_shape, int(num_classes or file_classes), 1.0, input_scaling,
                             sha256_of(path), fingerprint=saved_fingerprint(path))
        _check_file_model(model, source)
        return source
    if shape is None or not num_classes:
        raise ModelSourceError(f"{name} needs an input shape and a class count (the dataset's)")
    source = ModelSource(kind, name[len(APPLICATION_PREFIX):], shape, int(num_classes), float(width_mult),
                         input_scaling)
    source.application_args()  # refuses a width_mult / input_scaling the family cannot take, before any build
    return source


def from_config(model: Any, image_shape: Sequence[int], num_classes: int) -> ModelSource:
    """The :class:`ModelSource` ``config.model`` describes for the pipeline's images and classes."""
    return resolve(model.name, tuple(model.input_shape) or tuple(image_shape), model.num_classes or num_classes,
                   model.width_mult, model.input_scaling, tuple(model.get("boundaries", ())),
                   float(model.get("bn_momentum", 0.0)))


def check_record(record: Mapping[str, Any], input_scaling: str | None = None) -> None:
    """Refuses, without building anything, a record whose model cannot be rebuilt as it was: a changed
    or missing ``.keras`` file (both hashes named), a name this Keras or registry lacks, or (when given)
    an ``input_scaling`` other than the recorded one."""
    try:
        validate_record(record)
    except ValueError as e:
        raise ModelSourceError(str(e)) from None
    if record["kind"] == "keras_file":
        check_unchanged(record["path"], record["sha256"])
    else:
        kind_of(APPLICATION_PREFIX + record["name"] if record["kind"] == "application" else record["name"])
    if input_scaling is not None and input_scaling != record["input_scaling"]:
        raise ModelSourceError(f"config.model.input_scaling={input_scaling!r}, but the model was recorded with "
                               f"input_scaling={record['input_scaling']!r}; set "
                               f"--config.model.input_scaling={record['input_scaling']}")


def from_record(record: Mapping[str, Any]) -> ModelSource:
    """The :class:`ModelSource` of a ``model_source`` record, checked by :func:`check_record` first."""
    check_record(record)
    return dataclasses.replace(_from_record(record), boundaries=tuple(record.get("boundaries", ())),
                               bn_momentum=float(record.get("bn_momentum", 0.0)))


def _from_record(record: Mapping[str, Any]) -> ModelSource:
    kind, scaling = record["kind"], record["input_scaling"]
    if kind == "keras_file":
        shape, classes = _shape_of(_load_keras_file(record["path"]))
        return ModelSource(kind, record["path"], shape, classes, 1.0, scaling, record["sha256"],
                           fingerprint=record.get("fingerprint", ""))
    args = record["args"]
    if kind == "application":
        return ModelSource(kind, record["name"], tuple(args["input_shape"]), int(args["classes"]),
                           float(args.get("alpha", 1.0)), scaling)
    return ModelSource(kind, record["name"], tuple(args["input_shape"]), int(args["num_classes"]),
                       float(args["width_mult"]), scaling)


def builtin_record(model_info: Mapping[str, Any]) -> dict[str, Any]:
    """The ``model_source`` of a registry model's ``model_info`` (widths.json files from before provenance)."""
    return ModelSource("builtin", model_info["name"], tuple(int(d) for d in model_info["input_shape"]),
                       int(model_info["num_classes"]), float(model_info["width_mult"])).record()


def validate_record(record: Any) -> None:
    """Raises ValueError naming what a ``model_source`` record lacks (used when widths.json is read)."""
    if not isinstance(record, dict):
        raise ValueError("'model_source' must be an object")
    need = {"keras_file": ("path", "sha256"), "application": ("name", "args"), "builtin": ("name", "args")}
    if record.get("kind") not in need:
        raise ValueError(f"model_source kind {record.get('kind')!r} is invalid; valid kinds: {list(KINDS)}")
    for key in need[record["kind"]] + ("input_scaling",):
        if key not in record:
            raise ValueError(f"model_source ({record['kind']}) lacks {key!r}")
    if record["input_scaling"] not in INPUT_SCALINGS:
        raise ValueError(f"model_source input_scaling {record['input_scaling']!r} is invalid; valid values: "
                         f"{list(INPUT_SCALINGS)}")
