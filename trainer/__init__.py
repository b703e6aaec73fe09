"""tf-keras trainer: one day of training, from TFRecords to a versioned SavedModel.

The network (features, embeddings, backbones, heads), its training wrapper and optimizer, loss
balancing, data input, strategy, the day in phases, state and export.
"""

import multitower  # noqa: F401  (sets TF_USE_LEGACY_KERAS before TensorFlow loads)
