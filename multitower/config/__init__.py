"""The one configuration file: data, model and training settings, loaded strictly from YAML.

One module per section (`data`, `model`, `train`, `serving`, `evaluate`), the whole file in
`project`, loading in `load`. Every stage reads its own part of the same `Config`. Loading
validates once: an unknown key, a wrong type or a missing field raises `ConfigError` whose
message names the file and the key (`examples/impressions.yaml: model.mmoe.num_experts:
...`). Relative paths in the file are resolved against the file's own directory, so a config
and its data can move together.
"""

from multitower.config.data import (
    CategoricalFeature,
    DataConfig,
    Feature,
    NumericFeature,
    Task,
)
from multitower.config.evaluate import EvaluateConfig
from multitower.config.load import ConfigError, load_config, parse_config
from multitower.config.model import (
    EXCHANGES,
    PLACEMENTS,
    CGCConfig,
    EmbeddingsConfig,
    ESMMConfig,
    ExpertsConfig,
    MLPConfig,
    ModelConfig,
    PLEConfig,
    TableConfig,
)
from multitower.config.project import Config
from multitower.config.serving import (
    BatchingConfig,
    MonitoringConfig,
    ServingConfig,
    VersionPolicy,
)
from multitower.config.train import DWAConfig, GradNormConfig, TrainConfig

__all__ = [
    "EXCHANGES", "PLACEMENTS", "BatchingConfig", "CGCConfig", "CategoricalFeature", "Config",
    "ConfigError", "DWAConfig", "DataConfig", "ESMMConfig", "EmbeddingsConfig", "EvaluateConfig",
    "ExpertsConfig", "Feature",
    "GradNormConfig", "MLPConfig", "ModelConfig", "MonitoringConfig", "NumericFeature",
    "PLEConfig", "ServingConfig", "TableConfig", "Task", "TrainConfig", "VersionPolicy",
    "load_config", "parse_config",
]
