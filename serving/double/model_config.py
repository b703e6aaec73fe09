"""The model server config the double serves: what TF Serving refuses in it, refused alike.

TF Serving checks a `ModelConfigList` when it starts and each time it reads the file again
(server_core.cc); the double does the same, naming the file the config came from.
"""

from __future__ import annotations

import os

from tensorflow_serving.config import model_server_config_pb2

from multitower.errors import MultitowerError
from multitower.storage import is_remote


class ModelConfigError(MultitowerError, ValueError):
    """A model server config the double (or TF Serving) cannot serve; the message says why."""


def check_model_server_config(config: model_server_config_pb2.ModelServerConfig, source: str
                              ) -> None:
    """Refuses what TF Serving refuses in a `ModelConfigList` (server_core.cc), naming `source`.

    Raises:
        ModelConfigError: Not a model_config_list, a model listed twice or without a name, a
            relative base_path, or a platform other than `tensorflow`.
    """
    if config.WhichOneof("config") != "model_config_list":
        raise ModelConfigError(f"{source}: expected a model_config_list (the double does not "
                               f"serve TF Serving's custom_model_config)")
    names: set[str] = set()
    for model in config.model_config_list.config:
        if not model.name:
            raise ModelConfigError(f"{source}: a model in model_config_list has no name")
        if model.name in names:
            raise ModelConfigError(f"{source}: Illegal to list model {model.name} multiple times "
                                   f"in config list")
        names.add(model.name)
        if not (is_remote(model.base_path) or os.path.isabs(model.base_path)):
            raise ModelConfigError(f"{source}: Expected model {model.name} to have an absolute "
                                   f"path or URI; got base_path()={model.base_path}")
        if model.model_platform != "tensorflow":
            raise ModelConfigError(
                f"{source}: model {model.name} requests platform "
                f"{model.model_platform or '(none)'}; set model_platform: \"tensorflow\"")
