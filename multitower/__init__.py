"""multitower: multi-task recommendation training, from event logs to TF Serving.

Importing any multitower package sets `TF_USE_LEGACY_KERAS=1` before TensorFlow is imported, so
`tf.keras` is tf-keras (Keras 2): Keras 3's `model.fit` breaks under
MultiWorkerMirroredStrategy (keras-team/keras#20585). Code imports `tf_keras as keras`.
"""

import os

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # keep C++ INFO/WARNING chatter off the console

__version__ = "0.1.0"
