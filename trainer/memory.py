"""Will the model fit? The embedding tables' bytes, estimated before any variable exists.

Every worker holds every replicated table whole, with the row-sparse optimizer's slots beside
it: a table of R rows and width D takes `R x D x 4 x (1 + slots)` bytes (float32 variables
whatever `train.precision` says). Of a model-parallel table, each of N workers holds
`ceil(R / N)` rows and their slots. A `hash_buckets: 2**62` would otherwise end in an
out-of-memory traceback naming a tensor shape, minutes into the run.

The limit is `train.memory_budget_bytes` when set, else what this worker may use: its cgroup's
memory limit (a Kubernetes pod's `resources.limits.memory`) or the machine's available memory,
whichever is smaller.
"""

from __future__ import annotations

from dataclasses import dataclass

from multitower.config import Config
from multitower.errors import MultitowerError
from trainer.embeddings import make_row_sparse_optimizer

_CGROUP_LIMITS = ("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory/memory.limit_in_bytes")
_BYTES_PER_VALUE = 4  # float32


class MemoryBudgetError(MultitowerError):
    """The embedding tables would not fit in the worker's memory; the message names the keys."""


@dataclass(frozen=True)
class TableEstimate:
    """One table's estimated bytes and the config key that sizes it."""

    table: str
    key: str  # e.g. data.features[0]
    rows: int
    dim: int
    bytes: int


def table_estimates(config: Config, workers: int = 1) -> list[TableEstimate]:
    """The bytes of every embedding table and its optimizer slots on one worker, largest first.

    The single-task baseline gives every task its own tables, so they count once per task; a
    model-parallel table counts its share of rows on one of `workers` workers.
    """
    slots = len(make_row_sparse_optimizer(config.train.embedding_optimizer, 1.0).slot_names)
    copies = len(config.data.tasks) if config.model.backbone == "single_task" else 1
    found: dict[str, TableEstimate] = {}
    for index, feature in enumerate(config.data.features):
        if feature.type != "categorical" or feature.table in found:
            continue
        rows = feature.hash_buckets
        if config.model.embeddings.placement_of(feature.table) == "model_parallel":
            rows = -(-rows // max(1, workers))
        size = rows * feature.embedding_dim * _BYTES_PER_VALUE * (1 + slots)
        found[feature.table] = TableEstimate(feature.table, f"data.features[{index}]", rows,
                                             feature.embedding_dim, size * copies)
    return sorted(found.values(), key=lambda t: -t.bytes)


def available_memory() -> tuple[int, str]:
    """`(bytes, where from)`: the smaller of the cgroup limit and the machine's available memory."""
    options = []
    for path in _CGROUP_LIMITS:
        try:
            with open(path) as f:
                text = f.read().strip()
        except OSError:
            continue
        if text.isdigit() and int(text) < 1 << 60:  # "max" or a huge number: no limit
            options.append((int(text), f"the cgroup memory limit ({path})"))
            break
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    options.append((int(line.split()[1]) * 1024, "MemAvailable in /proc/meminfo"))
    except OSError:
        pass
    return min(options) if options else (1 << 62, "no known limit")


def _gib(count: int) -> str:
    return f"{count / (1 << 30):.1f} GiB"


def check_memory(config: Config, workers: int = 1) -> list[TableEstimate]:
    """Refuses a model whose tables would not fit one worker, before anything is built.

    Args:
        config: The loaded config.
        workers: The worker count (model-parallel tables are split over them).

    Returns:
        The estimates, largest first.

    Raises:
        MemoryBudgetError: The tables exceed `train.memory_budget_bytes`, or the worker's memory.
    """
    tables = table_estimates(config, workers)
    total = sum(t.bytes for t in tables)
    budget = config.train.memory_budget_bytes
    limit, source = (budget, "train.memory_budget_bytes") if budget else available_memory()
    if total <= limit:
        return tables
    largest = ", ".join(f"{t.key} (table {t.table!r}: {t.rows} x {t.dim}) {_gib(t.bytes)}"
                        for t in tables[:3])
    raise MemoryBudgetError(
        f"the embedding tables need about {_gib(total)} per worker (with "
        f"{config.train.embedding_optimizer}'s slots), more than {_gib(limit)} from {source}; "
        f"largest: {largest}. Lower hash_buckets or embedding_dim there, or place the table "
        f"model_parallel (model.embeddings.tables.<table>.placement) on several workers"
        + ("" if budget else ", or set train.memory_budget_bytes if the estimate is wrong"))


def stitched_table_bytes(config: Config) -> int:
    """Memory one process needs to hold every model-parallel table whole (rows only).

    Twice the rows: the array stitched from the parts and the variable it is copied into.
    """
    found = {f.table: f.hash_buckets * f.embedding_dim for f in config.data.categorical
             if config.model.embeddings.placement_of(f.table) == "model_parallel"}
    return 2 * _BYTES_PER_VALUE * sum(found.values())


def stitched_tables_fit(config: Config) -> tuple[bool, str]:
    """Whether this machine can hold the model-parallel tables whole, and the figures why."""
    need = stitched_table_bytes(config)
    budget = config.train.memory_budget_bytes
    limit, source = (budget, "train.memory_budget_bytes") if budget else available_memory()
    return need <= limit, f"{_gib(need)} needed, {_gib(limit)} from {source}"
