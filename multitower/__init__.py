"""multitower's base layer: the contracts every stage shares; it imports no stage.

The config (`config/`), the TFRecord contract (`records`, `origin`), dates and day partitions
(`dates`, `manifest`, `checksums`), the export layout (`exports`), the one value checker and
row decoder (`values`, `rows`), `TF_CONFIG` (`cluster`), leases (`lease`, `lease_store`), object
storage (`storage`) and the error base class (`errors`). The stages (`pipeline`, `trainer`,
`serving`) import these; the commands (`commands`) import everything.

Importing any multitower package sets `TF_USE_LEGACY_KERAS=1` before TensorFlow is imported, so
`tf.keras` is tf-keras (Keras 2): Keras 3's `model.fit` breaks under
MultiWorkerMirroredStrategy (keras-team/keras#20585). Code imports `tf_keras as keras`.
"""

import os

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # keep C++ INFO/WARNING chatter off the console

__version__ = "0.1.0"
