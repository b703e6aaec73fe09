"""`model_dir/state.json`: what the model has been trained on, so the next day can continue."""

from __future__ import annotations

import json
import uuid
from dataclasses import asdict, dataclass, field

import tensorflow as tf

from multitower.errors import MultitowerError
from trainer.model_dir import LAYOUT_VERSION, ModelDir


class StateError(MultitowerError, ValueError):
    """`state.json` is unreadable, or was written by another layout of `model_dir`."""


@dataclass
class TrainedDay:
    """One trained day: where it ended, what it read, the version it exported, its metrics."""

    date: str
    global_step: int
    steps: int
    rows: int
    version: int
    metrics: dict[str, float]
    # model-parallel tables: {layer: {"placement", "workers", "exchange"}} as trained that day
    tables: dict[str, dict] = field(default_factory=dict)


@dataclass
class ReExport:
    """A version exported again from a checkpoint (`multitower export`), without training.

    `date` is the day whose rows made its warmup file.
    """

    version: int
    checkpoint: str
    date: str


@dataclass
class TrainState:
    """The warm-start record the chief writes after each trained day.

    `normalization` holds the numeric constants frozen from the first trained day; the
    `schema_fingerprint` is the data schema the model's inputs were built for;
    `layout_version` the `model_dir` layout it was written with (`trainer.model_dir`);
    `exports` the versions `multitower export` wrote since (absent from older files of the
    same layout: read as none).
    """

    model_name: str
    schema_fingerprint: str
    normalization: dict[str, dict[str, float]]
    days: list[TrainedDay] = field(default_factory=list)
    layout_version: int = LAYOUT_VERSION
    exports: list[ReExport] = field(default_factory=list)

    @property
    def last_date(self) -> str | None:
        """The last trained day, or None before the first."""
        return self.days[-1].date if self.days else None

    @property
    def global_step(self) -> int:
        """The global step the last trained day ended at (0 before the first)."""
        return self.days[-1].global_step if self.days else 0

    @property
    def last_version(self) -> int:
        """The highest version a trained day or a re-export wrote (0 before any)."""
        return max([d.version for d in self.days] + [e.version for e in self.exports] + [0])

    def to_json(self) -> str:
        """The state as `state.json` text, with `last_date` and `global_step` spelled out."""
        doc = asdict(self)
        doc.update(last_date=self.last_date, global_step=self.global_step)
        return json.dumps(doc, indent=2, sort_keys=True)


def load_state(model_dir: str) -> TrainState | None:
    """Reads the state, or None for a model that was never trained.

    Raises:
        StateError: The file is not a valid state, or its layout version is not this code's.
    """
    path = ModelDir(model_dir).state
    if not tf.io.gfile.exists(path):
        return None
    try:
        doc = json.loads(tf.io.gfile.GFile(path).read())
        version = doc.get("layout_version", 1)  # layout version 1 wrote none
    except (ValueError, AttributeError) as err:
        raise StateError(f"{path}: not a valid multitower state file ({err!r})") from None
    if version != LAYOUT_VERSION:
        raise StateError(
            f"{path}: this model_dir was written with layout version {version}, this multitower "
            f"reads layout version {LAYOUT_VERSION}; train into a new model_dir (train.model_dir)")
    try:
        return TrainState(
            model_name=doc["model_name"],
            schema_fingerprint=doc["schema_fingerprint"],
            normalization=doc["normalization"],
            days=[TrainedDay(**d) for d in doc["days"]],
            layout_version=version,
            exports=[ReExport(**e) for e in doc.get("exports", [])],
        )
    except (KeyError, TypeError) as err:
        raise StateError(f"{path}: not a valid multitower state file ({err!r})") from None


def save_state(model_dir: str, state: TrainState) -> None:
    """Writes the state atomically: a temporary file, then a rename over the old one."""
    tf.io.gfile.makedirs(model_dir)
    path = ModelDir(model_dir).state
    tmp = f"{path}.tmp-{uuid.uuid4().hex}"
    with tf.io.gfile.GFile(tmp, "w") as f:
        f.write(state.to_json())
    tf.io.gfile.rename(tmp, path, overwrite=True)
