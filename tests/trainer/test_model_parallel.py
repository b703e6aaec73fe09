"""Model-parallel tables: the row layout, lookups through both exchanges on real workers, the
row-sparse optimizers applied by each owner, against one process training the same batches."""

# ruff: noqa: I001  (multitower must be imported before TensorFlow)
from pathlib import Path

import multitower  # noqa: F401  (TF_USE_LEGACY_KERAS before TensorFlow)
import numpy as np
import pytest
import tensorflow as tf

from trainer.embeddings import PartitionedEmbedding
from trainer.embeddings.model_parallel import rows_on_worker, split_rows
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


@pytest.fixture(scope="module")
def two_workers(tmp_path_factory):
    out = tmp_path_factory.mktemp("model-parallel")
    status = run_local_workers([WORKER, str(out)], 2, extra_env={"PYTHONPATH": REPO},
                               echo_workers=True)
    assert status == 0, f"a worker failed with exit code {status}"
    return out


@pytest.mark.integration
@pytest.mark.slow
def test_two_workers_train_as_one_process_for_every_optimizer_and_exchange(two_workers):
    from tests.trainer.model_parallel_worker_main import (
        BUCKETS, DIM, EXCHANGES, GLOBAL_BATCH, OPTIMIZERS, SLOTS, STEPS, build, data,
        initial_table,
    )

    features, targets = data()
    for optimizer in OPTIMIZERS:
        # one process, no strategy, the big table replicated: the reference
        model, table, small = build(optimizer, "replicated")
        table.shards[0].assign(initial_table())
        for step in range(STEPS):
            batch = slice(step * GLOBAL_BATCH, (step + 1) * GLOBAL_BATCH)
            model.train_step(({k: tf.constant(v[batch]) for k, v in features.items()},
                              tf.constant(targets[batch])))
        want = table.full_table().numpy()
        assert np.abs(want - initial_table()).max() > 1e-3  # training moved the rows
        for exchange in EXCHANGES:
            name = f"{optimizer}-{exchange}"
            workers = [dict(np.load(two_workers / f"{name}-worker-{w}.npz")) for w in range(2)]
            got = np.zeros((BUCKETS, DIM), np.float32)
            for w, arrays in enumerate(workers):
                # each worker holds exactly its rows, w::2
                assert arrays["rows"].shape == (rows_on_worker(BUCKETS, 2, w), DIM), name
                got[w::2] = arrays["rows"]
                assert arrays["grad_type"].tolist() == ["IndexedSlices"], name
            np.testing.assert_allclose(got, want, rtol=0, atol=1e-6, err_msg=name)
            for slot in SLOTS[optimizer]:
                want_slot = model.optimizer.tables.slot(table.shards[0], slot).numpy()
                got_slot = np.zeros_like(want_slot)
                for w, arrays in enumerate(workers):
                    got_slot[w::2] = arrays[f"slot_{slot}"]
                np.testing.assert_allclose(got_slot, want_slot, rtol=1e-6, atol=1e-6,
                                           err_msg=f"{name} {slot}")
            # the replicated table and the dense layer trained alongside, equal on both workers
            for key in ("replicated", "dense_0", "dense_1"):
                np.testing.assert_array_equal(workers[0][key], workers[1][key], err_msg=key)
            np.testing.assert_allclose(workers[0]["replicated"], small.full_table().numpy(),
                                       atol=1e-6, err_msg=name)
            np.testing.assert_allclose(workers[0]["dense_0"],
                                       model.get_layer("dense").get_weights()[0], atol=1e-6,
                                       err_msg=name)
