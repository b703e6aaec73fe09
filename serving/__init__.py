"""Serving: load exported SavedModels and answer with one score per task."""

import multitower  # noqa: F401  (sets TF_USE_LEGACY_KERAS before TensorFlow loads)
