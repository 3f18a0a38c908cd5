"""The ``tf.distribute`` strategy a config asks for, and the few facts programs need about it.

``config.distribute.strategy``:

* ``default``: TensorFlow's default strategy (one device, no overhead).
* ``mirrored``: ``MirroredStrategy`` over ``config.distribute.devices`` (default: all GPUs, or the
  CPU when there are none). Tests use two logical CPU devices.
* ``multi_worker``: ``MultiWorkerMirroredStrategy``; the cluster comes from ``$TF_CONFIG``
  (validated here, so a bad one fails with its content instead of hanging). Create it before any
  other TensorFlow op runs.
* ``tpu``: ``TPUStrategy`` on ``config.distribute.tpu`` (a name or ``grpc://`` address; "" = the
  local / environment TPU).

Under multi-worker training every worker runs the same program; only the chief writes artifacts,
summaries and the real checkpoints (the others save to a scratch folder because saving is a
collective operation every worker must take part in).
"""

from __future__ import annotations

import json
import os

import ml_collections
import tensorflow as tf

from cafe_tf.config import STRATEGIES, ConfigError


def validate_tf_config(raw: str | None) -> dict:
    """Parses ``$TF_CONFIG`` for multi-worker training; raises ConfigError naming what is wrong."""
    if not raw:
        raise ConfigError(
            "distribute.strategy='multi_worker' needs $TF_CONFIG, e.g. "
            '{"cluster": {"worker": ["host1:12345", "host2:12345"]}, "task": {"type": "worker", "index": 0}}'
        )
    try:
        tf_config = json.loads(raw)
    except json.JSONDecodeError as e:
        raise ConfigError(f"$TF_CONFIG={raw!r} is not valid JSON: {e}") from None
    if not isinstance(tf_config, dict):
        raise ConfigError(f"$TF_CONFIG={raw!r} must be a JSON object with 'cluster' and 'task'")
    cluster, task = tf_config.get("cluster"), tf_config.get("task")
    if not isinstance(cluster, dict) or not (cluster.get("worker") or cluster.get("chief")):
        raise ConfigError(f"$TF_CONFIG={raw!r} needs cluster.worker (a list of host:port) and/or cluster.chief")
    for role, addresses in cluster.items():
        if not isinstance(addresses, list) or not all(isinstance(a, str) and ":" in a for a in addresses):
            raise ConfigError(f"$TF_CONFIG cluster.{role}={addresses!r} must be a list of 'host:port' strings")
    if not isinstance(task, dict) or task.get("type") not in cluster:
        raise ConfigError(f"$TF_CONFIG task={task!r} must name a role of the cluster: {sorted(cluster)}")
    index = task.get("index")
    if not isinstance(index, int) or not 0 <= index < len(cluster[task["type"]]):
        raise ConfigError(
            f"$TF_CONFIG task.index={index!r} must be in [0, {len(cluster[task['type']])}) for role {task['type']!r}"
        )
    return tf_config


def strategy_from_config(distribute: ml_collections.ConfigDict) -> tf.distribute.Strategy:
    """Creates the strategy ``distribute.strategy`` names (see the module doc)."""
    name = distribute.strategy
    if name == "default":
        return tf.distribute.get_strategy()
    if name == "mirrored":
        devices = list(distribute.devices) or None
        if devices:
            known = {_canonical(d.name) for d in tf.config.list_logical_devices()}
            missing = [d for d in devices if _canonical(d) not in known]
            if missing:
                raise ConfigError(
                    f"config.distribute.devices names unknown devices {missing}; available: "
                    f"{sorted(d.name for d in tf.config.list_logical_devices())}"
                )
        return tf.distribute.MirroredStrategy(devices=devices)
    if name == "multi_worker":
        validate_tf_config(os.environ.get("TF_CONFIG"))
        return tf.distribute.MultiWorkerMirroredStrategy()
    if name == "tpu":
        resolver = tf.distribute.cluster_resolver.TPUClusterResolver(tpu=distribute.tpu or None)
        tf.config.experimental_connect_to_cluster(resolver)
        tf.tpu.experimental.initialize_tpu_system(resolver)
        return tf.distribute.TPUStrategy(resolver)
    raise ConfigError(f"config.distribute.strategy={name!r} is invalid; valid values: {list(STRATEGIES)}")


def _canonical(device: str) -> str:
    # "/cpu:0", "/device:CPU:0" and "/job:localhost/replica:0/task:0/device:CPU:0" name one device.
    spec = tf.DeviceSpec.from_string(device)
    return f"{(spec.device_type or '').upper()}:{spec.device_index or 0}"


def is_chief(strategy: tf.distribute.Strategy) -> bool:
    """Whether this process writes artifacts (always true off multi-worker training)."""
    resolver = getattr(strategy, "cluster_resolver", None)
    if resolver is None or not isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy):
        return True
    return _is_chief_task(resolver.task_type, resolver.task_id, "chief" in resolver.cluster_spec().as_dict())


def _is_chief_task(task_type: str | None, task_id: int, has_chief: bool) -> bool:
    """The cluster's chief: its ``chief`` task, or worker 0 when there is none (TensorFlow's rule)."""
    return task_type in (None, "chief") or (task_type == "worker" and task_id == 0 and not has_chief)


def worker_id(strategy: tf.distribute.Strategy) -> str:
    """A name for this process unique in the cluster (``chief`` / ``worker_3``)."""
    resolver = getattr(strategy, "cluster_resolver", None)
    if resolver is None or resolver.task_type is None:
        return "chief"
    return f"{resolver.task_type}_{resolver.task_id}"


def num_input_pipelines(strategy: tf.distribute.Strategy) -> int:
    """How many input pipelines ``distribute_datasets_from_function`` creates (one per worker / host)."""
    if isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy):
        return int(strategy.extended._num_workers)
    if isinstance(strategy, tf.distribute.TPUStrategy):
        return int(strategy.extended.num_hosts)
    return 1


def supports_partial_batches(strategy: tf.distribute.Strategy) -> bool:
    """Whether the last, smaller eval batch can be fed (TPUs need static shapes, so they drop it)."""
    return not isinstance(strategy, tf.distribute.TPUStrategy)


def describe(strategy: tf.distribute.Strategy) -> str:
    """One line naming the strategy and its replicas, for logs."""
    return f"{type(strategy).__name__} with {strategy.num_replicas_in_sync} replica(s)"


def log_name(program: str, distribute: ml_collections.ConfigDict | None) -> str:
    """``<program>.log``; ``<program>.<worker>.log`` on the non-chief workers of a multi-worker config
    (read from ``$TF_CONFIG``, before the strategy exists), so workers sharing a workdir do not write
    one file."""
    if distribute is None or distribute.get("strategy") != "multi_worker":
        return f"{program}.log"
    try:
        tf_config = json.loads(os.environ.get("TF_CONFIG") or "{}")
        task = tf_config.get("task", {})
        task_type, index = task.get("type"), int(task.get("index", 0))
        has_chief = bool(tf_config.get("cluster", {}).get("chief"))
    except (ValueError, AttributeError, TypeError):
        return f"{program}.log"  # the strategy's own check reports a bad $TF_CONFIG
    if _is_chief_task(task_type, index, has_chief):
        return f"{program}.log"
    return f"{program}.{task_type}_{index}.log"


def worker_root(strategy: tf.distribute.Strategy, workdir: str) -> str:
    """Where this process keeps its artifacts: ``workdir`` on the chief, ``<workdir>/.scratch_<worker>``
    on the other workers of a multi-worker cluster (their own copy, so no shared filesystem is needed
    and only the chief writes the real artifacts)."""
    if is_chief(strategy):
        return workdir
    return os.path.join(workdir, f".scratch_{worker_id(strategy)}")


def all_workers(strategy: tf.distribute.Strategy, flag: bool, what: str) -> bool:
    """``flag`` once every worker of a multi-worker cluster reports the same (a collective: every
    worker must call it at the same point); raises RuntimeError naming ``what`` when they differ,
    because workers that took different branches would wait on each other forever."""
    if not isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy):
        return flag
    value = strategy.run(lambda: tf.constant(1.0 if flag else 0.0))
    total = int(round(float(strategy.reduce(tf.distribute.ReduceOp.SUM, value, axis=None))))
    replicas = strategy.num_replicas_in_sync
    if total not in (0, replicas):
        raise RuntimeError(
            f"{what}: true on {total} of {replicas} replicas, false on the others (this worker, "
            f"{worker_id(strategy)}: {flag}); the workers' folders are out of step. Delete that stage's folder in "
            "the chief's workdir and in every worker's .scratch_* folder, then rerun"
        )
    return flag
