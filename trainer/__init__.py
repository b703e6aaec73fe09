"""tf-keras trainer: features, backbones, heads, data input, strategy, state, export."""

import multitower  # noqa: F401  (sets TF_USE_LEGACY_KERAS before TensorFlow loads)
