"""The top layer: the `multitower` command (`commands.cli`) and the local end-to-end demo.

Nothing in the base layer (`multitower`) or a stage (`pipeline`, `trainer`, `serving`) imports
these modules; they import any of them.
"""

import multitower  # noqa: F401  (sets TF_USE_LEGACY_KERAS before TensorFlow is imported)
