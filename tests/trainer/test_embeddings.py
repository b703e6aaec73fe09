"""Partitioned embedding tables: layout, lookup, row-sparse optimizers, MultiTaskOptimizer,
checkpoints and re-partitioning restore, SavedModel export, and two workers under
MultiWorkerMirroredStrategy."""

# ruff: noqa: I001  (multitower must be imported before TensorFlow)
import json
import subprocess
import sys
import textwrap
from pathlib import Path

import multitower  # noqa: F401  (TF_USE_LEGACY_KERAS before TensorFlow)
import numpy as np
import pytest
import tensorflow as tf
import tf_keras as keras

from multitower.config import TrainConfig
from multitower.config.train import DENSE_RATES
from multitower.errors import MultitowerError
from trainer.embeddings import (
    PartitionedEmbedding, PartitionMismatchError, embedding_variables,
    is_embedding_variable, locate, make_row_sparse_optimizer, owner, resolve_num_shards,
    restore_checkpoint, shard_sizes,
)
from trainer.features import HashedEmbedding
from trainer.launch import run_local_workers
from trainer.optimizer import MultiTaskOptimizer, make_optimizer

REPO = str(Path(__file__).resolve().parents[2])
WORKER = str(Path(__file__).with_name("embeddings_worker_main.py"))


def test_div_layout_puts_contiguous_ranges_in_shards_longest_first():
    assert shard_sizes(13, 5) == [3, 3, 3, 2, 2]
    assert shard_sizes(12, 3) == [4, 4, 4]
    shard, row = locate(tf.range(13, dtype=tf.int64), 13, 5)
    assert shard.numpy().tolist() == [0, 0, 0, 1, 1, 1, 2, 2, 2, 3, 3, 4, 4]
    assert row.numpy().tolist() == [0, 1, 2, 0, 1, 2, 0, 1, 2, 0, 1, 0, 1]


def test_number_of_shards_from_config_or_minimum_shard_size():
    assert resolve_num_shards(100, num_shards=7) == 7
    assert resolve_num_shards(10, min_shard_rows=3, max_shards=8) == 3  # 3 shards of >= 3 rows
    assert resolve_num_shards(100, min_shard_rows=1000) == 1
    assert resolve_num_shards(10_000_000, min_shard_rows=1 << 20, max_shards=8) == 8
    with pytest.raises(ValueError, match="num_shards must be in \\[1, num_buckets=5\\], got 6"):
        resolve_num_shards(5, num_shards=6)
    with pytest.raises(ValueError, match="num_buckets and dim must be >= 1, got 0 and 4"):
        PartitionedEmbedding(0, 4)


def test_lookup_is_hashed_embeddings_lookup_of_the_same_table():
    values = tf.constant(["a", "7", "zz", "a", ""])
    partitioned = PartitionedEmbedding(13, 4, num_shards=5)
    hashed = HashedEmbedding(13, 4)
    got = partitioned(values)
    hashed.build(values.shape)
    hashed.set_weights([partitioned.full_table().numpy()])
    np.testing.assert_array_equal(got.numpy(), hashed(values).numpy())
    assert got.shape == (5, 4)
    # integers go through their decimal string, and any input shape is kept
    np.testing.assert_array_equal(partitioned(tf.constant([[7]], tf.int64)).numpy()[0],
                                  got.numpy()[1:2])
    # same-sized shards start from different values
    assert not np.array_equal(partitioned.shards[3].numpy(), partitioned.shards[4].numpy())


def test_config_round_trip_keeps_the_number_of_shards_and_the_placement():
    layer = PartitionedEmbedding(50, 3, min_shard_rows=10, max_shards=4, name="t")
    config = layer.get_config()
    assert (config["num_shards"], config["placement"]) == (4, "replicated")
    again = keras.layers.deserialize(
        {"class_name": "multitower>PartitionedEmbedding", "config": config})
    assert isinstance(again, PartitionedEmbedding)
    assert (again.num_buckets, again.dim, again.num_shards, again.placement) == (
        50, 3, 4, "replicated")
    parallel = PartitionedEmbedding(50, 3, placement="model_parallel", exchange="all_reduce")
    again = keras.layers.deserialize(
        {"class_name": "multitower>PartitionedEmbedding", "config": parallel.get_config()})
    assert (again.placement, again.exchange, again.num_shards) == (
        "model_parallel", "all_reduce", 1)
    with pytest.raises(ValueError, match="placement must be one of \\['replicated', "
                       "'model_parallel'\\], got 'row_sharded'"):
        PartitionedEmbedding(50, 3, placement="row_sharded")


def _ops(graph: tf.Graph) -> list[tf.Operation]:
    found = list(graph.get_operations())
    for function in getattr(graph, "_functions", {}).values():
        if getattr(function, "graph", None) is not None:
            found += _ops(function.graph)
    return found


def test_under_mwms_a_step_reads_and_writes_rows_not_the_table():
    """Traces one train step under MWMS (one local worker, mirrored variables) for three toy
    models, each with its own table size, and lists the ops whose output has a table's shape."""
    strategy = tf.distribute.MultiWorkerMirroredStrategy()
    setups = {  # table rows: (embedding, row-sparse optimizer or None for the dense one)
        1000: (PartitionedEmbedding(1000, 4, num_shards=1), "adagrad"),  # the default
        1001: (PartitionedEmbedding(1001, 4, num_shards=3), "lazy_adam"),  # written here
        1002: (HashedEmbedding(1002, 4), None),  # the old path: tf-keras Adam on all
    }
    steps = []
    with strategy.scope():
        for embedding, name in setups.values():
            raw = keras.Input(shape=(), dtype=tf.string)
            model = keras.Model(raw, keras.layers.Dense(1)(embedding(raw)))
            dense = keras.optimizers.Adam(0.01)
            optimizer = (MultiTaskOptimizer(dense, make_row_sparse_optimizer(name, 0.1))
                         if name else dense)
            optimizer.build(model.trainable_variables)
            steps.append((model, optimizer))
    assert all(isinstance(m.trainable_variables[0], tf.distribute.DistributedValues)
               for m, _ in steps)

    @tf.function  # one trace for all three: tracing under MWMS takes seconds
    def step(x):
        def replica_step(x):
            for model, optimizer in steps:
                with tf.GradientTape() as tape:
                    loss = tf.reduce_mean(tf.square(model(x)))
                grads = tape.gradient(loss, model.trainable_variables)
                optimizer.apply_gradients(zip(grads, model.trainable_variables, strict=True))
        strategy.run(replica_step, (x,))

    x = tf.constant(["a", "b", "c"])
    step(x)
    reads = {rows: [] for rows in setups}
    for op in _ops(step.get_concrete_function(x).graph):
        for rows in {o.shape[0] for o in op.outputs if o.shape.rank == 2} & set(setups):
            reads[rows].append(op.type)
    assert reads[1000] == [] and reads[1001] == []
    # tf.gather on the mirrored variable reads it whole, and tf-keras Adam rewrites all rows
    assert "ReadVariableOp" in reads[1002] and "Mul" in reads[1002]
    assert int(steps[1][1].iterations.numpy()) == 1 and int(steps[1][1].tables.step.numpy()) == 1


def _table(buckets: int = 6, shards: int = 2, name: str = "t", **kwargs) -> PartitionedEmbedding:
    table = PartitionedEmbedding(buckets, 2, num_shards=shards, name=name, **kwargs)
    table.build((None,))
    return table


def _two_steps(optimizer, batches) -> list[np.ndarray]:
    """The table after each step of `sum(lookup)` minimization, one batch of ids per step."""
    table = _table(embeddings_initializer="ones")
    seen = [table.full_table().numpy()]
    for ids in batches:
        with tf.GradientTape() as tape:
            loss = tf.reduce_sum(table.lookup(tf.constant(ids, tf.int64)) * [1.0, -2.0])
        grads = tape.gradient(loss, table.shards)
        assert all(isinstance(g, tf.IndexedSlices) for g in grads)
        optimizer.apply_gradients(zip(grads, table.shards, strict=True))
        seen.append(table.full_table().numpy())
    return seen


@pytest.mark.parametrize("name", ["adagrad", "ftrl", "lazy_adam", "sgd"])
def test_row_sparse_optimizers_change_only_the_rows_of_the_batch(name):
    optimizer = MultiTaskOptimizer(keras.optimizers.Adam(), make_row_sparse_optimizer(name, 0.1))
    start, first, second = _two_steps(optimizer, [[0, 4], [1]])
    changed = lambda a, b: np.nonzero(np.any(a != b, axis=1))[0].tolist()  # noqa: E731
    assert changed(start, first) == [0, 4]
    assert changed(first, second) == [1]
    assert int(optimizer.iterations.numpy()) == 2  # counted without any dense variable


def test_keras_adam_moves_rows_outside_the_batch():
    start, first, second = _two_steps(keras.optimizers.Adam(0.1), [[0, 4], [1]])
    # momentum from step 1 keeps moving rows 0 and 4 in step 2, where only row 1 was looked up
    assert np.nonzero(np.any(first != second, axis=1))[0].tolist() == [0, 1, 4]


# Per step: (indices, values) of shard 0 (rows 0-2) and of shard 1 (rows 3-5), with duplicates.
_GRADS = [
    (([0, 2, 0], [[0.5, -1.0], [2.0, 0.1], [0.25, 0.5]]), ([1, 1], [[1.0, 1.0], [-3.0, 0.5]])),
    (([2], [[-0.3, 0.2]]), ([1, 1, 1], [[0.1, 0.2], [0.3, 0.4], [0.5, -0.6]])),
    (([0, 0], [[1.0, -1.0], [1.0, 2.0]]), ([1], [[-1.0, 0.5]])),
]
_LEGACY = {"adagrad": keras.optimizers.legacy.Adagrad, "ftrl": keras.optimizers.legacy.Ftrl,
           "sgd": keras.optimizers.legacy.SGD}


def _slices(indices, values) -> tf.IndexedSlices:
    return tf.IndexedSlices(tf.constant(values), tf.constant(indices, tf.int64), [3, 2])


@pytest.mark.parametrize("name", sorted(_LEGACY))
def test_row_sparse_optimizers_equal_keras_legacy_ones_and_leave_other_rows_alone(name):
    table = _table(embeddings_initializer=keras.initializers.RandomUniform(-1, 1, seed=5))
    start = table.full_table().numpy()
    ours, legacy = make_row_sparse_optimizer(name, 0.1), _LEGACY[name](0.1)
    plain = [tf.Variable(s.numpy()) for s in table.shards]
    for grads in _GRADS:
        ours.apply([(_slices(*g), s) for g, s in zip(grads, table.shards, strict=True)])
        legacy.apply_gradients([(_slices(*g), v) for g, v in zip(grads, plain, strict=True)])
    got, want = table.full_table().numpy(), np.concatenate([v.numpy() for v in plain])
    np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-6)
    untouched = [1, 3, 5]  # shard 0's row 1, shard 1's rows 0 and 2
    assert not np.allclose(got, start) and np.array_equal(got[untouched], start[untouched])
    assert ours.slot_names == tuple(legacy.get_slot_names())
    for slot in ours.slot_names:
        mine = np.concatenate([ours.slot(s, slot).numpy() for s in table.shards])
        np.testing.assert_allclose(
            mine, np.concatenate([legacy.get_slot(v, slot).numpy() for v in plain]),
            rtol=1e-6, atol=1e-6)
        assert np.all(mine[untouched] == ours.initial_values[slot])


def test_a_dense_shard_gradient_still_updates_the_shard_with_a_warning(caplog):
    table = _table(embeddings_initializer="ones")
    make_row_sparse_optimizer("sgd", 0.5).apply([(tf.ones([3, 2]), table.shards[0])])
    np.testing.assert_array_equal(table.full_table(), [[0.5, 0.5]] * 3 + [[1.0, 1.0]] * 3)
    assert "the gradient of shard part_0_of_2 of table 't' is dense" in caplog.text


def test_lazy_adam_first_step_by_hand_and_equal_to_adam_on_rows_seen_every_step():
    table = _table(buckets=2, shards=1, embeddings_initializer="ones")
    make_row_sparse_optimizer("lazy_adam", 0.1).apply(
        [(tf.IndexedSlices(tf.constant([[2.0, 2.0]]), tf.constant([0])), table.shards[0])])
    # step 1: m = 0.1 g, v = 0.001 g^2, w -= 0.1 * sqrt(0.001) / 0.1 * m / (sqrt(v) + 1e-7)
    np.testing.assert_allclose(table.full_table(), [[0.9, 0.9], [1.0, 1.0]], atol=1e-5)
    lazy = _table(buckets=2, shards=1, name="u")
    adam = tf.Variable(lazy.shards[0].numpy())
    lazy_opt = make_row_sparse_optimizer("lazy_adam", 0.1)
    adam_opt = keras.optimizers.legacy.Adam(0.1)
    for grad in ([[0.5, -1.0], [2.0, 0.1]], [[-0.3, 0.2], [0.0, 1.5]], [[1.0, 1.0], [-1.0, 0.5]]):
        grad = tf.IndexedSlices(tf.constant(grad), tf.constant([0, 1]))
        lazy_opt.apply([(grad, lazy.shards[0])])
        adam_opt.apply_gradients([(grad, adam)])
    np.testing.assert_allclose(lazy.shards[0].numpy(), adam.numpy(), rtol=1e-6)
    assert int(lazy_opt.step.numpy()) == 3


def _trained(num_shards: int, optimizer: str = "adagrad", buckets: int = 11,
             tables: bool = True):
    raw = keras.Input(shape=(), dtype=tf.string)
    table = PartitionedEmbedding(buckets, 3, num_shards=num_shards, name="table")
    model = keras.Model(raw, keras.layers.Dense(1, name="dense")(table(raw)))
    opt = MultiTaskOptimizer(keras.optimizers.Adam(0.01),
                             make_row_sparse_optimizer(optimizer, 0.1))
    opt.build([v for v in model.trainable_variables if tables or not is_embedding_variable(v)])
    return model, table, opt, tf.train.Checkpoint(model=model, optimizer=opt)


def _step(model, optimizer, values):
    with tf.GradientTape() as tape:
        loss = tf.reduce_sum(tf.square(model(tf.constant(values)) - 1.0))
    grads = tape.gradient(loss, model.trainable_variables)
    optimizer.apply_gradients(zip(grads, model.trainable_variables, strict=True))


def _slots(optimizer, table) -> dict[str, np.ndarray]:
    return {name: np.concatenate([optimizer.tables.slot(s, name).numpy() for s in table.shards])
            for name in optimizer.tables.slot_names}


def test_multitask_optimizer_gives_shards_to_the_tables_and_the_rest_to_the_dense_one():
    model, table, optimizer, _ = _trained(2, tables=False)  # the tables' slots come lazily
    assert embedding_variables(model) == table.shards
    assert [is_embedding_variable(v) for v in model.trainable_variables] == [1, 1, 0, 0]
    assert owner(table.shards[1]) == (table, 1)
    _step(model, optimizer, ["x", "y"])
    tables = optimizer.tables
    assert [tables.slot(s, "accumulator").shape for s in table.shards] == [(6, 3), (5, 3)]
    assert len(optimizer.dense.variables) == 1 + 2 * 2  # iterations, then m and v of 2 weights
    assert len(optimizer.variables) == 5 + 2 and int(optimizer.iterations.numpy()) == 1
    with pytest.raises(ValueError, match="unknown embedding optimizer 'adam'"):
        make_row_sparse_optimizer("adam", 0.1)
    with pytest.raises(ValueError, match="learning_rate must be > 0, got 0"):
        make_row_sparse_optimizer("sgd", 0)
    with pytest.raises(TypeError, match="not a legacy one"):
        MultiTaskOptimizer(keras.optimizers.legacy.Adam(), tables)
    with pytest.raises(ValueError, match="not a shard"):
        owner(model.trainable_variables[2])
    made = make_optimizer(TrainConfig(model_dir="m", export_dir="e", optimizer="sgd",
                                      embedding_optimizer="ftrl", embedding_learning_rate=0.2))
    assert (type(made.dense), made.tables.get_config()) == (
        keras.optimizers.SGD, {"name": "ftrl", "learning_rate": 0.2})
    # no dense rate in the config: SGD's own default rate, not Adam's
    assert made.dense.learning_rate.numpy() == np.float32(DENSE_RATES["sgd"])


def test_compiled_model_fits_and_a_checkpoint_restores_every_slot_and_the_step(tmp_path):
    from tests.trainer.embeddings_worker_main import VALUES, build, targets

    model, _ = build(2, "lazy_adam")  # compiled with a MultiTaskOptimizer, and built
    model.fit(tf.data.Dataset.from_tensor_slices((VALUES[:10], targets()[:10])).batch(4),
              verbose=0)
    optimizer = model.optimizer
    assert int(optimizer.iterations.numpy()) == 3 and int(optimizer.tables.step.numpy()) == 3
    assert optimizer.learning_rate.numpy() == np.float32(0.01)
    path = tf.train.Checkpoint(network=model, optimizer=optimizer).save(str(tmp_path / "ckpt"))
    saved = {name for name, _ in tf.train.list_variables(path)}
    assert {f"optimizer/tables/slots/table/{s}/part_{i}_of_2/.ATTRIBUTES/VARIABLE_VALUE"
            for s in "mv" for i in range(2)} <= saved
    again, _ = build(2, "lazy_adam")
    assert restore_checkpoint(tf.train.Checkpoint(network=again, optimizer=again.optimizer),
                              path) == []
    # dense: iterations, m and v of kernel and bias; tables: step, m and v of both shards
    assert len(optimizer.variables) == 5 + 1 + 4
    for mine, theirs in zip(again.optimizer.variables, optimizer.variables, strict=True):
        assert np.any(theirs.numpy() != 0), theirs.name
        np.testing.assert_array_equal(mine.numpy(), theirs.numpy(), err_msg=theirs.name)
    config = MultiTaskOptimizer.from_config(optimizer.get_config()).get_config()
    assert config == optimizer.get_config() and config["tables"] == {
        "name": "lazy_adam", "learning_rate": 0.1}


@pytest.mark.parametrize("name,slots", [
    ("adagrad", ("accumulator",)), ("ftrl", ("accumulator", "linear")), ("lazy_adam", ("m", "v")),
    ("sgd", ())])
def test_restore_with_another_number_of_shards_re_partitions_table_and_slots(
        tmp_path, name, slots):
    model, table, optimizer, checkpoint = _trained(2, name)
    for values in (["a", "b", "c"], ["c", "d"]):
        _step(model, optimizer, values)
    path = checkpoint.save(str(tmp_path / "ckpt"))
    saved = table.full_table().numpy()
    # the tables' slots are created by the restore itself
    again, again_table, again_optimizer, again_checkpoint = _trained(3, name, tables=False)
    done = restore_checkpoint(again_checkpoint, path)
    assert [(d.layer, d.old_shards, d.new_shards, d.slots) for d in done] == [
        ("table", 2, 3, slots)]
    assert [s.shape[0] for s in again_table.shards] == [4, 4, 3]
    np.testing.assert_array_equal(again_table.full_table(), table.full_table())
    old_slots, new_slots = _slots(optimizer, table), _slots(again_optimizer, again_table)
    assert list(new_slots) == list(slots)
    for slot in slots:  # row by row
        np.testing.assert_array_equal(new_slots[slot], old_slots[slot])
    np.testing.assert_array_equal(again.get_layer("dense").get_weights()[0],
                                  model.get_layer("dense").get_weights()[0])
    assert int(again_optimizer.iterations.numpy()) == 2
    # and it trains on as if nothing had happened
    _step(model, optimizer, ["a", "e"])
    _step(again, again_optimizer, ["a", "e"])
    np.testing.assert_allclose(again_table.full_table(), table.full_table(), rtol=1e-6)
    # a model restored for evaluation has no optimizer: the table alone is re-partitioned
    raw = keras.Input(shape=(), dtype=tf.string)
    plain_table = PartitionedEmbedding(11, 3, num_shards=5, name="table")
    plain = keras.Model(raw, keras.layers.Dense(1, name="dense")(plain_table(raw)))
    assert [d.slots for d in restore_checkpoint(tf.train.Checkpoint(model=plain), path)] == [()]
    np.testing.assert_array_equal(plain_table.full_table(), saved)


def test_restore_with_the_same_shards_or_refusing_another_number(tmp_path):
    model, table, optimizer, checkpoint = _trained(2)
    _step(model, optimizer, ["a"])
    path = checkpoint.save(str(tmp_path / "ckpt"))
    _, same_table, same_optimizer, same = _trained(2)
    assert restore_checkpoint(same, path) == []
    np.testing.assert_array_equal(same_table.full_table(), table.full_table())
    np.testing.assert_array_equal(_slots(same_optimizer, same_table)["accumulator"],
                                  _slots(optimizer, table)["accumulator"])
    with pytest.raises(PartitionMismatchError, match="holds its table in 2 shards, the model "
                       "has 3; keep num_shards=2"):
        restore_checkpoint(_trained(3)[3], path, allow_repartition=False)
    with pytest.raises(PartitionMismatchError, match="saved as a 11 x 3 table, the model's is "
                       "12 x 3: hashed ids differ"):
        restore_checkpoint(_trained(3, buckets=12)[3], path)
    with pytest.raises(PartitionMismatchError, match="keeps \\['m', 'v'\\]"):
        restore_checkpoint(_trained(3, optimizer="lazy_adam")[3], path)
    # a checkpoint of the unpartitioned HashedEmbedding in the same place
    raw = keras.Input(shape=(), dtype=tf.string)
    old = keras.Model(raw, keras.layers.Dense(1)(HashedEmbedding(11, 3)(raw)))
    old_path = tf.train.Checkpoint(model=old).save(str(tmp_path / "old"))
    with pytest.raises(PartitionMismatchError, match="holds no shards of layer 'table' \\(it "
                       "has \\['embeddings'\\]: written before the table was partitioned\\?\\); "
                       "train into a new model_dir") as refused:
        restore_checkpoint(_trained(2)[3], old_path)
    assert isinstance(refused.value, MultitowerError) and isinstance(refused.value, ValueError)


_LOAD = textwrap.dedent("""
    import json, sys
    import tensorflow as tf  # plain TensorFlow, as TF Serving: no multitower, no custom ops
    loaded = tf.saved_model.load(sys.argv[1])
    out = loaded.signatures["serving_default"](
        user=tf.constant(["a", "b", "zz", "7"]), hour=tf.constant([7, 3, 0, 7], tf.int64))
    print(json.dumps(out["score"].numpy().tolist()))
""")


def test_saved_model_loads_in_plain_tensorflow_and_gives_the_same_outputs(tmp_path):
    user = keras.Input(shape=(), dtype=tf.string, name="user")
    hour = keras.Input(shape=(), dtype=tf.int64, name="hour")
    parts = [PartitionedEmbedding(50, 4, num_shards=3)(user),
             PartitionedEmbedding(24, 2, num_shards=1)(hour)]
    score = keras.layers.Dense(1)(keras.layers.Concatenate()(parts))
    model = keras.Model({"user": user, "hour": hour}, score)

    @tf.function(input_signature=[{"user": tf.TensorSpec([None], tf.string, name="user"),
                                   "hour": tf.TensorSpec([None], tf.int64, name="hour")}])
    def serve(features):
        return {"score": tf.squeeze(model(features), axis=-1)}

    tf.saved_model.save(model, str(tmp_path / "1"), signatures={"serving_default": serve})
    expected = model({"user": tf.constant(["a", "b", "zz", "7"]),
                      "hour": tf.constant([7, 3, 0, 7], tf.int64)})[:, 0].numpy()
    run = subprocess.run([sys.executable, "-c", _LOAD, str(tmp_path / "1")],
                         capture_output=True, text=True, env={"TF_CPP_MIN_LOG_LEVEL": "2"})
    assert run.returncode == 0, run.stderr[-2000:]
    np.testing.assert_allclose(json.loads(run.stdout.strip().splitlines()[-1]), expected,
                               atol=1e-6)
    from tensorflow.core.protobuf import saved_model_pb2

    saved = saved_model_pb2.SavedModel()
    saved.ParseFromString((tmp_path / "1" / "saved_model.pb").read_bytes())
    used = {op.name for op in saved.meta_graphs[0].meta_info_def.stripped_op_list.op}
    assert {"ResourceGather", "DynamicPartition", "DynamicStitch"} <= used
    assert sorted(op for op in used if not hasattr(tf.raw_ops, op)) == []  # stock ops only


@pytest.mark.integration
@pytest.mark.slow
def test_two_workers_keep_identical_tables_and_untouched_rows(tmp_path):
    from tests.trainer.embeddings_worker_main import (
        BUCKETS, GLOBAL_BATCH, OPTIMIZERS, SLOTS, VALUES, build, targets,
    )

    status = run_local_workers([WORKER, str(tmp_path)], 2, extra_env={"PYTHONPATH": REPO},
                               echo_workers=True)
    assert status == 0, f"a worker failed with exit code {status}"
    looked_up = set(tf.strings.to_hash_bucket_fast(tf.strings.as_string(VALUES), BUCKETS)
                    .numpy().tolist())
    assert 0 < len(looked_up) < BUCKETS
    for optimizer in OPTIMIZERS:
        first, second = (dict(np.load(tmp_path / f"{optimizer}-worker-{i}.npz"))
                         for i in range(2))
        assert set(first) == set(second)
        for key in first:  # tables, slots, dense weights: bit-identical on both workers
            np.testing.assert_array_equal(first[key], second[key], err_msg=key)
        assert bool(first["sparse_grads"])
        changed = np.any(first["final"] != first["initial"], axis=1)
        assert set(np.nonzero(changed)[0].tolist()) == looked_up, optimizer
        # the same global batches on one process, without a strategy, end at the same table:
        # the gradients summed over workers (one all-gather per table) are the global ones
        model, table = build(3, optimizer)
        bounds = np.cumsum(shard_sizes(BUCKETS, 3))[:-1]
        for shard, part in zip(table.shards, np.split(first["initial"], bounds), strict=True):
            shard.assign(part)
        model.get_layer("dense").set_weights([first["initial_dense_0"], first["initial_dense_1"]])
        for start in range(0, len(VALUES), GLOBAL_BATCH):
            batch = slice(start, start + GLOBAL_BATCH)
            model.train_step((tf.constant(VALUES[batch]), tf.constant(targets()[batch])))
        np.testing.assert_allclose(table.full_table().numpy(), first["final"], rtol=1e-5,
                                   atol=1e-6, err_msg=optimizer)
        # the 3-shard checkpoint, restored into 2 shards on each worker
        np.testing.assert_array_equal(first["restored"], first["final"])
        for slot in SLOTS[optimizer]:
            np.testing.assert_array_equal(first[f"restored_slot_{slot}"], first[f"slot_{slot}"])
            start = make_row_sparse_optimizer(optimizer, 0.1).initial_values.get(slot, 0.0)
            assert np.all(first[f"slot_{slot}"][~changed] == start), slot
