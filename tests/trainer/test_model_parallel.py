"""Model-parallel tables: the row layout, lookups through both exchanges on real workers, the
row-sparse optimizers applied by each owner, against one process training the same batches."""

# ruff: noqa: I001  (multitower must be imported before TensorFlow)
from pathlib import Path

import multitower  # noqa: F401  (TF_USE_LEGACY_KERAS before TensorFlow)
import numpy as np
import pytest
import tensorflow as tf

from trainer.embeddings import PartitionedEmbedding, restore_parts
from trainer.embeddings.model_parallel import Workers, local_variable, rows_on_worker, split_rows
from trainer.launch import run_local_workers

REPO = str(Path(__file__).resolve().parents[2])
WORKER = str(Path(__file__).with_name("model_parallel_worker_main.py"))


def test_worker_w_of_n_holds_rows_w_w_plus_n_and_so_on():
    assert [rows_on_worker(10, 3, w) for w in range(3)] == [4, 3, 3]
    assert [rows_on_worker(2, 3, w) for w in range(3)] == [1, 1, 0]
    full = np.arange(20).reshape(10, 2)
    parts = [split_rows(full, 3, w) for w in range(3)]
    np.testing.assert_array_equal(parts[1][:, 0], [2, 8, 14])
    back = np.zeros_like(full)
    for w, part in enumerate(parts):
        back[w::3] = part
    np.testing.assert_array_equal(back, full)


def test_without_a_cluster_a_model_parallel_table_holds_every_row_and_looks_up_as_one():
    table = PartitionedEmbedding(13, 3, num_shards=4, placement="model_parallel", name="t")
    values = tf.constant([["a", "b"], ["c", "a"]])
    out = table(values)
    (rows,) = table.shards
    assert rows.shape == (13, 3) and table.num_shards == 1
    ids = tf.strings.to_hash_bucket_fast(values, 13)
    np.testing.assert_array_equal(out.numpy(), tf.gather(rows, ids).numpy())
    assert table.get_config()["placement"] == "model_parallel"
    with pytest.raises(ValueError, match="exchange must be one of"):
        PartitionedEmbedding(13, 3, placement="model_parallel", exchange="nccl")


def _cluster(tmp_path_factory, count: int, combos: list[str]) -> Path:
    out = tmp_path_factory.mktemp(f"model-parallel-{count}")
    status = run_local_workers([WORKER, str(out), *combos], count,
                               extra_env={"PYTHONPATH": REPO}, echo_workers=True)
    assert status == 0, f"a worker failed with exit code {status}"
    return out


@pytest.fixture(scope="module")
def two_workers(tmp_path_factory):
    return _cluster(tmp_path_factory, 2, [])


@pytest.fixture(scope="module")
def three_workers(tmp_path_factory):
    return _cluster(tmp_path_factory, 3, ["adagrad:all_to_all", "adagrad:all_reduce",
                                          "lazy_adam:all_to_all"])


def _reference(optimizer: str):
    """One process, no strategy, the big table replicated, trained on the same global batches."""
    from tests.trainer.model_parallel_worker_main import (
        GLOBAL_BATCH, STEPS, build, data, initial_table,
    )

    features, targets = data()
    model, table, small = build(optimizer, "replicated")
    table.shards[0].assign(initial_table())
    for step in range(STEPS):
        batch = slice(step * GLOBAL_BATCH, (step + 1) * GLOBAL_BATCH)
        model.train_step(({k: tf.constant(v[batch]) for k, v in features.items()},
                          tf.constant(targets[batch])))
    assert np.abs(table.full_table().numpy() - initial_table()).max() > 1e-3  # rows moved
    return model, table, small


def _check_cluster(out: Path, count: int, combos: list[tuple[str, str]]) -> None:
    from tests.trainer.model_parallel_worker_main import BUCKETS, DIM, SLOTS

    for optimizer in sorted({o for o, _ in combos}):
        model, table, small = _reference(optimizer)
        want = table.full_table().numpy()
        for exchange in [e for o, e in combos if o == optimizer]:
            name = f"{optimizer}-{exchange}"
            workers = [dict(np.load(out / f"{name}-worker-{w}.npz")) for w in range(count)]
            got = np.zeros((BUCKETS, DIM), np.float32)
            for w, arrays in enumerate(workers):
                # each worker holds exactly its rows, w::count
                assert arrays["rows"].shape == (rows_on_worker(BUCKETS, count, w), DIM), name
                got[w::count] = arrays["rows"]
                assert arrays["grad_type"].tolist() == ["IndexedSlices"], name
            np.testing.assert_allclose(got, want, rtol=0, atol=1e-6, err_msg=name)
            for slot in SLOTS[optimizer]:
                want_slot = model.optimizer.tables.slot(table.shards[0], slot).numpy()
                got_slot = np.zeros_like(want_slot)
                for w, arrays in enumerate(workers):
                    got_slot[w::count] = arrays[f"slot_{slot}"]
                np.testing.assert_allclose(got_slot, want_slot, rtol=1e-6, atol=1e-6,
                                           err_msg=f"{name} {slot}")
            for w, arrays in enumerate(workers):
                # uneven id counts (3 + w ids on worker w) look up the trained rows exactly
                assert len(arrays["uneven_ids"]) == 3 + w
                np.testing.assert_array_equal(arrays["uneven_rows"], got[arrays["uneven_ids"]],
                                              err_msg=f"{name} uneven, worker {w}")
            # the replicated table and the dense layer trained alongside, equal on every worker
            for key in ("replicated", "dense_0", "dense_1"):
                for arrays in workers[1:]:
                    np.testing.assert_array_equal(workers[0][key], arrays[key], err_msg=key)
            np.testing.assert_allclose(workers[0]["replicated"], small.full_table().numpy(),
                                       atol=1e-6, err_msg=name)
            np.testing.assert_allclose(workers[0]["dense_0"],
                                       model.get_layer("dense").get_weights()[0], atol=1e-6,
                                       err_msg=name)


@pytest.mark.integration
@pytest.mark.slow
def test_two_workers_train_as_one_process_for_every_optimizer_and_exchange(two_workers):
    from tests.trainer.model_parallel_worker_main import EXCHANGES, OPTIMIZERS

    _check_cluster(two_workers, 2, [(o, e) for o in OPTIMIZERS for e in EXCHANGES])


@pytest.mark.integration
@pytest.mark.slow
def test_three_workers_train_as_one_process_and_their_parts_re_partition_onto_two(
        three_workers):
    from tests.trainer.model_parallel_worker_main import BUCKETS, DIM

    _check_cluster(three_workers, 3, [("adagrad", "all_to_all"), ("adagrad", "all_reduce"),
                                      ("lazy_adam", "all_to_all")])
    workers = [dict(np.load(three_workers / f"adagrad-all_to_all-worker-{w}.npz"))
               for w in range(3)]
    checkpoint = str(three_workers / "adagrad-all_to_all" / "ckpt-1")
    for key, slot in (("rows", ""), ("slot_accumulator", "__accumulator")):
        want = np.zeros((BUCKETS, DIM), np.float32)
        for w, arrays in enumerate(workers):
            want[w::3] = arrays[key]
        got = np.zeros_like(want)
        for w in range(2):  # 3 -> 2 workers
            mine = local_variable(tf.zeros((rows_on_worker(BUCKETS, 2, w), DIM)), f"m{w}",
                                  trainable=False)
            restore_parts({f"big{slot}": mine}, checkpoint, Workers(2, w), {"big": BUCKETS})
            got[w::2] = mine.numpy()
        np.testing.assert_array_equal(got, want, err_msg=key)
