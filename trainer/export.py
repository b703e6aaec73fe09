"""Versioned SavedModels for TF Serving, in the layout of `multitower.exports`.

The `serving_default` signature takes the raw features by their log names and dtypes, shape
`(batch,)`, and returns `{task name: (batch,)}`: a probability for binary tasks, a regression
task's value in the label's own unit (a `log1p` label transform is inverted here), and with ESMM
also the pCTCVR output. Gate weights are diagnostics and stay out of the signature.
"""

from __future__ import annotations

import os
import uuid

import tensorflow as tf
import tf_keras as keras

from multitower.config import Config
from multitower.errors import MultitowerError
from multitower.exports import model_base, version_dir
from multitower.records import feature_dtype
from multitower.storage import rename_dir
from trainer.losses import invert_output


class VersionExistsError(MultitowerError, FileExistsError):
    """An export version folder exists already; versions are never overwritten."""


def serving_function(model: keras.Model, config: Config) -> tf.types.experimental.ConcreteFunction:
    """The serving signature's concrete function over raw inputs."""
    specs = {
        f.name: tf.TensorSpec([None], feature_dtype(f.dtype), name=f.name)
        for f in config.data.features
    }

    served = {t.name: t.label_transform for t in config.data.tasks}
    if config.model.heads == "esmm":
        served[config.model.esmm.ctcvr_name] = "none"

    @tf.function(input_signature=[specs])
    def serve(features: dict[str, tf.Tensor]) -> dict[str, tf.Tensor]:
        outputs = model(features, training=False)
        return {
            name: invert_output(tf.squeeze(outputs[name], axis=-1), transform)
            for name, transform in served.items()
        }

    return serve.get_concrete_function()


def export_saved_model(model: keras.Model, config: Config, version: int) -> str:
    """Writes `model` as version `version`; the folder appears only once complete.

    The SavedModel is written under a temporary name that TF Serving ignores (it is not an
    integer), then renamed.
    """
    base = model_base(config.train.export_dir, config.model.name)
    final = version_dir(base, version)
    if tf.io.gfile.exists(final):
        raise VersionExistsError(f"{final} already exists; versions are never overwritten")
    tmp = os.path.join(base, f".tmp-{version}-{uuid.uuid4().hex}")
    tf.io.gfile.makedirs(base)
    tf.saved_model.save(
        model, tmp, signatures={"serving_default": serving_function(model, config)}
    )
    rename_dir(tmp, final)
    return final
