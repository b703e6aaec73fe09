"""Two training steps of every balancer under a 2-replica MirroredStrategy, and on one device.

Usage: python balancing_replicas_main.py
Splits the CPU into two logical devices (only possible before TensorFlow initializes, hence a
process of its own), trains a tiny two-task model (a shared embedding and dense layer, one head
per task) for two steps per method, once under MirroredStrategy with four rows per replica and
once under the default strategy on all eight rows, and prints one JSON object:
`{method: {"replica_gap": ..., "single_device_gap": ..., "state": {name: value}}}`: the largest
absolute difference of any variable (model and balancer state) between the two replicas, the
largest relative one (to max(1, |value|)) between the distributed and the single-device run, and
the balancer's non-trainable state after the distributed run.
"""

# ruff: noqa: I001  (multitower must be imported before TensorFlow)
import json

import multitower  # noqa: F401  (TF_USE_LEGACY_KERAS before TensorFlow)
import numpy as np
import tensorflow as tf
import tf_keras as keras

from multitower.config import TrainConfig
from trainer.balancing import METHODS, make_balancer

ROWS = 8
TASKS = ["a", "b"]


def _data() -> dict[str, np.ndarray]:
    rng = np.random.default_rng(7)
    x = rng.normal(size=(ROWS, 3)).astype(np.float32)
    return {
        "x": x,
        "ids": rng.integers(0, 6, size=ROWS).astype(np.int32),
        # Opposed targets so that PCGrad finds conflicting gradients.
        "a": (x @ [1.0, -2.0, 0.5]).astype(np.float32),
        "b": (-2.0 * x @ [1.0, -2.0, 0.5] + 1.0).astype(np.float32),
    }


def _state(balancer) -> list[tf.Variable]:
    return [v for v in balancer.variables if not v.trainable]


def _train(method: str, strategy: tf.distribute.Strategy, split: bool) -> tuple[list, list]:
    """Two steps; returns (model and balancer variables, balancer state) as created."""
    rng = np.random.default_rng(0)
    train = TrainConfig(model_dir="unused", export_dir="unused")
    with strategy.scope():
        variables = [
            tf.Variable(rng.normal(size=(6, 2)).astype(np.float32), name="embedding"),
            tf.Variable(rng.normal(size=(3, 2)).astype(np.float32), name="shared"),
            tf.Variable(rng.normal(size=(2,)).astype(np.float32), name="head_a"),
            tf.Variable(rng.normal(size=(2,)).astype(np.float32), name="head_b"),
        ]
        balancer = make_balancer(method, TASKS, {"a": 1.0, "b": 0.5}, train)
        optimizer = keras.optimizers.SGD(0.1)
    if method == "dwa":  # cross-replica context, as from a Keras callback
        balancer.end_of_epoch({"a": 2.0, "b": 2.0})
        balancer.end_of_epoch({"a": 1.0, "b": 1.9})
    shared = [True, True, False, False]
    data = _data()

    def step(batch):
        embedding, dense, head_a, head_b = variables
        with tf.GradientTape(persistent=True) as tape:
            hidden = tf.tanh(batch["x"] @ dense + tf.gather(embedding, batch["ids"]))
            losses = {
                "a": tf.reduce_mean(tf.square(tf.linalg.matvec(hidden, head_a) - batch["a"])),
                "b": tf.reduce_mean(tf.square(tf.linalg.matvec(hidden, head_b) - batch["b"])),
            }
        _, grads = balancer.gradients(tape, losses, variables, shared, [dense])
        optimizer.apply_gradients(zip(grads, variables + balancer.trainable_weights(),
                                      strict=True))

    if split:
        per = ROWS // strategy.num_replicas_in_sync
        batch = strategy.experimental_distribute_values_from_function(
            lambda ctx: {k: v[ctx.replica_id_in_sync_group * per:][:per] for k, v in data.items()}
        )
    else:
        batch = data

    @tf.function
    def run(batch):
        strategy.run(step, args=(batch,))

    for _ in range(2):
        run(batch)
    return variables + balancer.trainable_weights(), _state(balancer)


def _components(variable) -> list[np.ndarray]:
    values = getattr(variable, "values", None)
    return [np.asarray(v) for v in values] if values is not None else [variable.numpy()]


def main() -> None:
    cpu = tf.config.list_physical_devices("CPU")[0]
    tf.config.set_logical_device_configuration(
        cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
    mirrored = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
    report = {}
    for method in METHODS:
        spread, spread_state = _train(method, mirrored, split=True)
        alone, alone_state = _train(method, tf.distribute.get_strategy(), split=False)
        replica_gap = single_gap = 0.0
        for dist, single in zip(spread + spread_state, alone + alone_state, strict=True):
            first, *others = _components(dist)
            for other in others:
                replica_gap = max(replica_gap, float(np.max(np.abs(first - other))))
            relative = np.abs(first - single.numpy()) / np.maximum(1.0, np.abs(single.numpy()))
            single_gap = max(single_gap, float(np.max(relative)))
        report[method] = {
            "replicas": mirrored.num_replicas_in_sync,
            "replica_gap": replica_gap,
            "single_device_gap": single_gap,
            "state": {v.name.split(":")[0]: _components(v)[0].tolist() for v in spread_state},
        }
    print(json.dumps(report))


if __name__ == "__main__":
    main()
