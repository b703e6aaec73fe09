"""Model-parallel tables through `train_day` on two workers: each worker's rows and its part of
the checkpoint, the export stitched from the parts and scored in a fresh process, the stitched
table outside the cluster, re-partitioning to other worker counts, and the next day on one
process continuing from the two workers' parts."""

# ruff: noqa: I001  (multitower must be imported before TensorFlow)
import gzip
import json
import os
import subprocess
import sys
from pathlib import Path

import multitower  # noqa: F401  (TF_USE_LEGACY_KERAS before TensorFlow)
import numpy as np
import pytest
import tensorflow as tf

from multitower.config import load_config
from tests.small_project import DAYS, config_in
from trainer.embeddings import PartsMissingError, restore_parts
from trainer.embeddings.model_parallel import Workers, local_variable, rows_on_worker
from trainer.embeddings.per_worker import part_prefix
from trainer.evaluate import restore_network
from trainer.launch import cluster_env, free_ports, run_local_workers
from trainer.state import load_state

pytestmark = [pytest.mark.integration, pytest.mark.slow]
WORKER = str(Path(__file__).with_name("model_parallel_day_main.py"))
REPO = str(Path(__file__).resolve().parents[2])
GROUP = "embed_fused_d16_model_parallel"  # user_id and item_id (and the list recent_items)


EMBEDDINGS = {"num_shards": 3, "tables": {"user_id": {"placement": "model_parallel"},
                                          "item_id": {"placement": "model_parallel"}}}


@pytest.fixture(scope="module")
def day1(small_project, tmp_path_factory):
    folder = tmp_path_factory.mktemp("model-parallel-days")
    config_path = config_in(small_project, folder, embeddings=EMBEDDINGS)
    rows = folder / "rows.jsonl"
    day3 = sorted((Path(small_project["root"]) / "work" / "logs" / f"dt={DAYS[2]}").glob("*.gz"))
    with gzip.open(day3[0], "rt") as f, rows.open("w") as out:
        for _, line in zip(range(200), f, strict=False):
            out.write(line)
    (folder / "day1").mkdir()
    status = run_local_workers([WORKER, str(config_path), DAYS[0], str(folder / "day1"),
                                str(rows)], 2, extra_env={"PYTHONPATH": REPO},
                               echo_workers=True)
    assert status == 0, f"a worker failed with exit code {status}"
    dumps = [dict(np.load(folder / "day1" / f"worker-{i}.npz")) for i in range(2)]
    config = load_config(config_path)
    step = int(dumps[0]["global_step"])
    return {"folder": folder, "config_path": config_path, "config": config, "rows": rows,
            "dumps": dumps, "checkpoint": str(folder / "model" / "checkpoints" / f"ckpt-{step}")}


def _buckets(config) -> int:
    return sum({f.table: f.hash_buckets for f in config.data.categorical
                if f.table in ("user_id", "item_id")}.values())


def _stitched(dumps, key: str) -> np.ndarray:
    parts = [d[key] for d in dumps]
    full = np.zeros((sum(len(p) for p in parts), *parts[0].shape[1:]), parts[0].dtype)
    for w, part in enumerate(parts):
        full[w::len(parts)] = part
    return full


def test_each_worker_holds_its_rows_and_saves_them_beside_the_chiefs_checkpoint(day1):
    buckets = _buckets(day1["config"])
    for w, dump in enumerate(day1["dumps"]):
        assert dump[f"rows/{GROUP}"].shape == (rows_on_worker(buckets, 2, w), 16)
        assert dump[f"slot/{GROUP}/accumulator"].shape == dump[f"rows/{GROUP}"].shape
        assert tf.io.gfile.exists(part_prefix(day1["checkpoint"], w, 2) + ".index")
    # replicated weights are equal on both workers; the model-parallel rows are not copies
    for key in day1["dumps"][0]:
        if key.startswith("dense/"):
            np.testing.assert_array_equal(day1["dumps"][0][key], day1["dumps"][1][key])
    # the chief's checkpoint holds the replicated tables, not the model-parallel rows
    names = [name for name, _ in tf.train.list_variables(day1["checkpoint"])]
    assert any("embed_fused_d4_replicated" in n for n in names)
    assert not any(GROUP in n for n in names)
    # the day's state says how the table was split and exchanged
    state = load_state(day1["config"].train.model_dir)
    assert state.days[-1].tables == {GROUP: {"placement": "model_parallel", "workers": 2,
                                             "exchange": "all_to_all"}}
    # the part holds rows and the Adagrad accumulator of this worker's rows
    part = tf.train.load_checkpoint(part_prefix(day1["checkpoint"], 1, 2))
    np.testing.assert_array_equal(
        part.get_tensor(f"parts/{GROUP}/.ATTRIBUTES/VARIABLE_VALUE"),
        day1["dumps"][1][f"rows/{GROUP}"])


def test_the_export_loaded_fresh_scores_as_the_distributed_model(day1):
    out = subprocess.run(
        [sys.executable, "-m", "commands.cli", "predict",
         "--model", str(day1["folder"] / "export" / "impressions"), "--input", str(day1["rows"])],
        capture_output=True, text=True, check=True, cwd=REPO)
    predictions = [json.loads(line) for line in out.stdout.splitlines()]
    assert len(predictions) == 200
    for task in ("click", "conversion", "watch_time"):
        served = np.array([p[task] for p in predictions])
        np.testing.assert_allclose(served, day1["dumps"][0][f"pred_{task}"], atol=1e-5)
        np.testing.assert_allclose(day1["dumps"][1][f"pred_{task}"],
                                   day1["dumps"][0][f"pred_{task}"], atol=1e-6)


def test_outside_the_cluster_the_network_gets_the_whole_table_stitched(day1):
    state = load_state(day1["config"].train.model_dir)
    network = restore_network(day1["config"], state.normalization, day1["checkpoint"])
    layer = network.get_layer(GROUP)
    np.testing.assert_array_equal(layer.full_table().numpy(),
                                  _stitched(day1["dumps"], f"rows/{GROUP}"))


@pytest.mark.parametrize("count", [1, 3])
def test_parts_of_two_workers_re_partition_exactly_onto_other_counts(day1, count):
    buckets = _buckets(day1["config"])
    want = {"": _stitched(day1["dumps"], f"rows/{GROUP}"),
            "__accumulator": _stitched(day1["dumps"], f"slot/{GROUP}/accumulator")}
    got = {k: np.zeros_like(v) for k, v in want.items()}
    for w in range(count):
        mine = {f"{GROUP}{k}": local_variable(tf.zeros((rows_on_worker(buckets, count, w), 16)),
                                              f"v{w}{k}", trainable=False) for k in want}
        restore_parts(mine, day1["checkpoint"], Workers(count, w), {GROUP: buckets})
        for k in want:
            got[k][w::count] = mine[f"{GROUP}{k}"].numpy()
    for k in want:
        np.testing.assert_array_equal(got[k], want[k], err_msg=k)


def test_missing_parts_are_named(day1, tmp_path):
    variable = {GROUP: local_variable(tf.zeros((3, 16)), "x", trainable=False)}
    with pytest.raises(PartsMissingError, match="has no model-parallel parts"):
        restore_parts(variable, str(tmp_path / "ckpt-1"), Workers(1, 0), {GROUP: 3})
    with pytest.raises(PartsMissingError,
                       match="not \\[2, 16\\] \\(worker 0 of 2.s rows of a 3-row"):
        restore_parts(variable, day1["checkpoint"], Workers(1, 0), {GROUP: 3})


def test_the_next_day_on_one_process_continues_from_the_two_workers_parts(day1):
    out = day1["folder"] / "day2"
    out.mkdir()
    done = subprocess.run([sys.executable, WORKER, str(day1["config_path"]), DAYS[1], str(out),
                           str(day1["rows"])],
                          env={**os.environ, "PYTHONPATH": REPO, "TF_CONFIG": ""},
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "re-partitioned" in done.stderr and "from 2 worker part(s)" in done.stderr
    dump = dict(np.load(out / "worker-0.npz"))
    assert dump[f"rows/{GROUP}"].shape == (_buckets(day1["config"]), 16)
    assert int(dump["global_step"]) > int(day1["dumps"][0]["global_step"])
    step = int(dump["global_step"])
    assert tf.io.gfile.exists(part_prefix(str(day1["folder"] / "model" / "checkpoints" /
                                              f"ckpt-{step}"), 0, 1) + ".index")


def test_a_killed_worker_relaunched_resumes_from_every_workers_backup(day1, small_project,
                                                                      tmp_path):
    """Day 1 again with a backup every 3 steps at 2 steps per call; the chief dies at step 6,
    after the backup at step 4 (every worker's part of it written); the same command again
    ends with the rows of the uninterrupted run."""
    config = config_in(small_project, tmp_path, embeddings=EMBEDDINGS,
                       train={"backup_every_steps": 3, "steps_per_execution": 2})
    ports = free_ports(2)
    (tmp_path / "crash").mkdir()
    procs = [subprocess.Popen(
        [sys.executable, WORKER, str(config), DAYS[0], str(tmp_path / "crash"),
         str(day1["rows"])],
        env={**cluster_env(2, i, ports), "PYTHONPATH": REPO, "CRASH_WORKER_AFTER": "0:5"},
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL) for i in range(2)]
    codes = [p.wait(timeout=300) for p in procs]
    assert codes[0] == 3 and codes[1] != 0
    backup = tmp_path / "model" / "backup" / f"dt={DAYS[0]}-from-0-workers-2"
    for w in range(2):
        assert tf.io.gfile.exists(part_prefix(str(backup / "ckpt-4"), w, 2) + ".index")
    (tmp_path / "relaunch").mkdir()
    status = run_local_workers([WORKER, str(config), DAYS[0], str(tmp_path / "relaunch"),
                                str(day1["rows"])], 2, extra_env={"PYTHONPATH": REPO},
                               echo_workers=True)
    assert status == 0
    for w in range(2):
        resumed = dict(np.load(tmp_path / "relaunch" / f"worker-{w}.npz"))
        steady = day1["dumps"][w]
        assert int(resumed["global_step"]) == int(steady["global_step"])
        for key in (f"rows/{GROUP}", f"slot/{GROUP}/accumulator"):
            np.testing.assert_allclose(resumed[key], steady[key], rtol=1e-5, atol=1e-6,
                                       err_msg=key)
    assert not os.listdir(tmp_path / "model" / "backup")  # removed once the day is complete


def test_a_table_changes_placement_through_its_checkpoint_and_back(day1, tmp_path):
    from multitower.config import EmbeddingsConfig
    from trainer.embeddings import restore_checkpoint
    from trainer.training_model import build_training_model

    normalization = load_state(day1["config"].train.model_dir).normalization
    rows = _stitched(day1["dumps"], f"rows/{GROUP}")
    accumulator = _stitched(day1["dumps"], f"slot/{GROUP}/accumulator")
    # model-parallel (2 workers' parts) -> replicated in 3 shards: stitched, rows and slots
    model = day1["config"].model.model_copy(update={"embeddings": EmbeddingsConfig(num_shards=3)})
    replicated_config = day1["config"].model_copy(update={"model": model})
    replicated = build_training_model(replicated_config, normalization)
    done = restore_checkpoint(replicated.checkpoint(), day1["checkpoint"])
    assert [(r.layer, r.placement_changed) for r in done] == [
        ("embed_fused_d16_replicated", True)]
    layer = replicated.network.get_layer("embed_fused_d16_replicated")
    np.testing.assert_array_equal(layer.full_table().numpy(), rows)
    tables = replicated.optimizer.tables
    np.testing.assert_array_equal(
        np.concatenate([tables.slot(v, "accumulator").numpy() for v in layer.shards]),
        accumulator)
    path = replicated.checkpoint().write(str(tmp_path / "ckpt-1"))
    # ... and back: replicated -> model-parallel (one process holds every row)
    parallel = build_training_model(day1["config"], normalization)
    done = restore_checkpoint(parallel.checkpoint(), path)
    assert [(r.layer, r.placement_changed) for r in done] == [(GROUP, True)]
    (mine,) = parallel.network.get_layer(GROUP).shards
    np.testing.assert_array_equal(mine.numpy(), rows)
    np.testing.assert_array_equal(parallel.optimizer.tables.local_slots(GROUP)["accumulator"]
                                  .numpy(), accumulator)


def test_the_repartition_command_rewrites_the_parts_for_another_count(day1, tmp_path):
    import shutil

    shutil.copytree(day1["folder"] / "model", tmp_path / "model")
    checkpoint = str(tmp_path / "model" / "checkpoints" / Path(day1["checkpoint"]).name)
    config = tmp_path / "config.yaml"
    raw = day1["config_path"].read_text().replace(str(day1["folder"] / "model"),
                                                  str(tmp_path / "model"))
    config.write_text(raw)
    done = subprocess.run([sys.executable, "-m", "commands.cli", "repartition", "--config",
                           str(config), "--workers", "3", "--checkpoint", checkpoint],
                          capture_output=True, text=True, cwd=REPO, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "model-parallel parts of 2 worker(s) rewritten for 3" in done.stdout
    assert not tf.io.gfile.exists(part_prefix(checkpoint, 0, 2) + ".index")  # old ones gone
    buckets = _buckets(day1["config"])
    for key, name in ((f"rows/{GROUP}", GROUP), (f"slot/{GROUP}/accumulator",
                                                  f"{GROUP}__accumulator")):
        got = np.zeros((buckets, 16), np.float32)
        for w in range(3):
            part = tf.train.load_checkpoint(part_prefix(checkpoint, w, 3))
            got[w::3] = part.get_tensor(f"parts/{name}/.ATTRIBUTES/VARIABLE_VALUE")
        np.testing.assert_array_equal(got, _stitched(day1["dumps"], key), err_msg=key)


def test_a_step_saved_again_on_another_count_replaces_the_old_parts(tmp_path):
    from trainer.embeddings.per_worker import save_parts, written_count

    checkpoint = str(tmp_path / "ckpt-5")
    for w in range(2):
        rows = local_variable(tf.fill((rows_on_worker(5, 2, w), 2), float(w)), f"r{w}",
                              trainable=False)
        save_parts({"t": rows}, checkpoint, Workers(2, w))
    assert written_count(checkpoint) == 2
    whole = local_variable(tf.range(5.0)[:, None] * tf.ones((1, 2)), "whole", trainable=False)
    save_parts({"t": whole}, checkpoint, Workers(1, 0))  # the same step again, one worker
    assert written_count(checkpoint) == 1
    back = local_variable(tf.zeros((5, 2)), "back", trainable=False)
    restore_parts({"t": back}, checkpoint, Workers(1, 0), {"t": 5})
    np.testing.assert_array_equal(back.numpy()[:, 0], np.arange(5.0))


def test_evaluate_on_two_workers_scores_as_the_stitched_table_on_one(day1, tmp_path):
    reports = {}
    for workers in (1, 2):
        out = tmp_path / f"eval-{workers}.json"
        done = subprocess.run(
            [sys.executable, "-m", "commands.cli", "evaluate", "--config",
             str(day1["config_path"]), "--date", DAYS[1], "--output", str(out),
             "--workers", str(workers)],
            capture_output=True, text=True, cwd=REPO, timeout=600)
        assert done.returncode == 0, done.stderr[-3000:]
        reports[workers] = json.loads(out.read_text())
    one, two = reports[1], reports[2]
    assert one["rows"] == two["rows"] > 0 and one["checkpoint"] == two["checkpoint"]
    for task, values in one["tasks"].items():
        for metric, value in values.items():
            if metric == "calibration_curve":  # the same bins, the same points in them
                assert [b["rows"] for b in two["tasks"][task][metric]] == [
                    b["rows"] for b in value]
                for mine, theirs in zip(value, two["tasks"][task][metric], strict=True):
                    assert theirs == pytest.approx(mine, abs=1e-6), (task, metric)
            else:
                assert two["tasks"][task][metric] == pytest.approx(value, abs=1e-6), (task,
                                                                                      metric)


def test_one_process_refuses_tables_too_large_to_stitch_and_names_the_cluster_path(day1):
    from trainer.evaluate import evaluate_day
    from trainer.incremental import TrainingError

    train = day1["config"].train.model_copy(update={"memory_budget_bytes": 1000})
    config = day1["config"].model_copy(update={"train": train})
    with pytest.raises(TrainingError, match="do not fit this machine whole .* needed, 0.0 GiB "
                       "from train.memory_budget_bytes.*multitower evaluate --workers N"):
        evaluate_day(config, DAYS[1])
