"""Beam job: raw logs of one day to TFRecords, rejected rows and a manifest."""

import multitower  # noqa: F401  (sets TF_USE_LEGACY_KERAS before TensorFlow loads)
