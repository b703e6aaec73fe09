"""One factory for the tf.distribute strategy, read from the environment (`multitower.cluster`).

A laptop run and a 16-worker run differ only in `TF_CONFIG`. MultiWorkerMirroredStrategy is used
when `TF_CONFIG` names a cluster of several workers or when one machine has several GPUs
(single-machine MirroredStrategy has no efficient path for sparse embedding gradients,
tensorflow/tensorflow#41898); otherwise the default strategy.
"""

from __future__ import annotations

import tensorflow as tf

from multitower.cluster import export_tf_config, task_info


def make_strategy() -> tf.distribute.Strategy:
    """Builds the strategy for this process; call it before creating any TensorFlow state."""
    export_tf_config()  # an Indexed Job's pod: TensorFlow reads the cluster from TF_CONFIG only
    info = task_info()
    gpus = tf.config.list_physical_devices("GPU")
    if info.num_workers > 1 or len(gpus) > 1:
        options = tf.distribute.experimental.CommunicationOptions(
            implementation=tf.distribute.experimental.CommunicationImplementation.AUTO
        )
        return tf.distribute.MultiWorkerMirroredStrategy(communication_options=options)
    return tf.distribute.get_strategy()
