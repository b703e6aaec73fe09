"""Partitioned embedding tables: layout, layer, row-sparse optimizers, exchange, restore.

A table of `num_buckets` rows is split row-wise into P shard variables (`layout`) by the
`PartitionedEmbedding` layer (`layer`), whose lookup reads only the looked-up rows of the
replica's own copy. Its gradients are `tf.IndexedSlices`; under several replicas they are summed
one table at a time in one all-reduce (`exchange`) and applied by a row-sparse optimizer written
here (`optimizers`) that touches only the received rows of each shard and of its slots.
`trainer.optimizer.MultiTaskOptimizer` puts that together with the dense optimizer. A
checkpoint written with another P is re-partitioned on restore (`repartition`).

Tables of one width and placement are fused into one `FusedEmbedding` (`fused`), a
`PartitionedEmbedding` whose rows are its tables' rows end to end: one lookup, one exchanged
gradient and one row-sparse update per group instead of per table.

`placement` is where a table's rows live: `replicated` (every worker holds the whole table) or
`model_parallel` (worker w of N holds rows w::N in one variable of its own, and lookups fetch
rows from their owners through an all-to-all or an all-reduce, `model_parallel`). Tables are
only ever grouped with tables of the same placement.
"""

from trainer.embeddings.exchange import all_reduce_tables
from trainer.embeddings.fused import FusedEmbedding, TableRows, find_table, fused_name
from trainer.embeddings.layer import (
    PLACEMENTS,
    PartitionedEmbedding,
    embedding_variables,
    hash_ids,
    is_embedding_variable,
    owner,
)
from trainer.embeddings.layout import (
    DEFAULT_MAX_SHARDS,
    DEFAULT_MIN_SHARD_ROWS,
    local_copy,
    locate,
    resolve_num_shards,
    shard_sizes,
)
from trainer.embeddings.optimizers import (
    EMBEDDING_OPTIMIZERS,
    RowSparseOptimizer,
    make_row_sparse_optimizer,
)
from trainer.embeddings.per_worker import (
    PartsMissingError,
    model_parallel_variables,
    placements,
    repartition_parts,
    restore_parts,
    split_of,
    stitched_weights,
    table_rows,
)
from trainer.embeddings.repartition import (
    FusionMismatchError,
    PartitionMismatchError,
    Repartition,
    restore_checkpoint,
    restore_with_parts,
)

__all__ = [
    "DEFAULT_MAX_SHARDS", "DEFAULT_MIN_SHARD_ROWS", "EMBEDDING_OPTIMIZERS", "PLACEMENTS",
    "FusedEmbedding", "FusionMismatchError", "PartitionMismatchError", "PartitionedEmbedding",
    "PartsMissingError", "model_parallel_variables", "placements", "repartition_parts",
    "restore_parts", "split_of", "stitched_weights", "table_rows",
    "Repartition", "RowSparseOptimizer", "TableRows", "all_reduce_tables", "embedding_variables",
    "find_table", "fused_name", "hash_ids", "is_embedding_variable", "local_copy", "locate",
    "make_row_sparse_optimizer", "owner", "resolve_num_shards", "restore_checkpoint",
    "restore_with_parts",
    "shard_sizes",
]
