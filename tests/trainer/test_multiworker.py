"""Two trainer processes on localhost under MultiWorkerMirroredStrategy, every embedding table
in 3 shards: two days in a row, the exported SavedModel scored in a fresh process, a worker
killed mid-day then relaunched, and the next day on one worker with 2 shards per table."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from tests.small_project import BATCH, DAYS, config_in
from trainer.launch import cluster_env, free_ports, run_local_workers

pytestmark = [pytest.mark.integration, pytest.mark.slow]
WORKER = str(Path(__file__).with_name("worker_main.py"))
REPO = str(Path(__file__).resolve().parents[2])


def _train(config_path: Path, date: str, out: Path, rows: Path | None = None) -> list[dict]:
    out.mkdir()
    argv = [WORKER, str(config_path), date, str(out)] + ([str(rows)] if rows else [])
    status = run_local_workers(argv, 2, extra_env={"PYTHONPATH": REPO}, echo_workers=True)
    assert status == 0, f"a worker failed with exit code {status}"
    return [dict(np.load(out / f"worker-{i}.npz")) for i in range(2)]


@pytest.fixture(scope="module")
def two_days(small_project, tmp_path_factory):
    folder = tmp_path_factory.mktemp("multiworker")
    config_path = config_in(small_project, folder)
    rows = folder / "rows.jsonl"
    import gzip

    day3 = sorted((Path(small_project["root"]) / "work" / "logs" / f"dt={DAYS[2]}").glob("*.gz"))
    with gzip.open(day3[0], "rt") as f, rows.open("w") as out:
        for _, line in zip(range(200), f, strict=False):
            out.write(line)
    day1 = _train(config_path, DAYS[0], folder / "day1")
    shutil.copytree(folder / "model", folder / "model-after-day1")
    day2 = _train(config_path, DAYS[1], folder / "day2", rows)
    return {"folder": folder, "config_path": config_path, "rows": rows, "day1": day1,
            "day2": day2, "manifests": small_project["manifests"]}


def _weights(dump: dict) -> list[np.ndarray]:
    return [dump[f"w{i}"] for i in range(sum(k.startswith("w") for k in dump))]


def test_both_workers_end_with_identical_weights(two_days):
    for day in ("day1", "day2"):
        a, b = (_weights(d) for d in two_days[day])
        assert int(two_days[day][0]["num_replicas"]) == 2  # really one cluster of two
        assert len(a) == len(b) > 0
        for wa, wb in zip(a, b, strict=True):
            np.testing.assert_array_equal(wa, wb)
        # the embedding tables and their row-sparse optimizer's accumulators too
        first, second = two_days[day]
        shared = sorted(k for k in first if k.startswith(("table/", "slot/")))
        # user_id's rows are in the fused table of width 16
        assert "table/embed_fused_d16_replicated" in shared
        assert "slot/embed_fused_d16_replicated/accumulator" in shared
        assert shared == sorted(k for k in second if k.startswith(("table/", "slot/")))
        for key in shared:
            np.testing.assert_array_equal(first[key], second[key], err_msg=key)


def test_second_day_continues_from_first_days_step(two_days):
    steps = [m["rows"]["written"] // BATCH for m in two_days["manifests"][:2]]
    assert int(two_days["day1"][0]["global_step"]) == steps[0]
    assert int(two_days["day2"][0]["global_step"]) == steps[0] + steps[1]
    # and from its weights: day 2 started where day 1 ended, not from a fresh init
    changed = [np.abs(a - b).max() for a, b in
               zip(_weights(two_days["day1"][0]), _weights(two_days["day2"][0]), strict=True)]
    assert max(changed) > 0
    state = json.loads((two_days["folder"] / "model" / "state.json").read_text())
    assert [d["date"] for d in state["days"]] == DAYS[:2]
    assert [d["version"] for d in state["days"]] == [1, 2]
    assert state["global_step"] == steps[0] + steps[1]


def test_only_the_chief_writes_exports_and_checkpoints(two_days):
    export = two_days["folder"] / "export" / "impressions"
    assert sorted(os.listdir(export)) == ["1", "2"]
    assert (export / "2" / "saved_model.pb").exists()
    ckpts = sorted(p.name for p in (two_days["folder"] / "model" / "checkpoints").iterdir())
    assert "checkpoint" in ckpts and any(n.startswith("ckpt-") for n in ckpts)
    events = list((two_days["folder"] / "model" / "tensorboard").rglob("events.out.tfevents.*"))
    import tensorflow as tf

    tags = {v.tag for e in events for ev in tf.compat.v1.train.summary_iterator(str(e))
            for v in ev.summary.value}
    assert {"epoch_click_auc", "epoch_weight/click", "epoch_gate/click/expert0"} <= tags


def test_export_loaded_fresh_reproduces_the_trained_model(two_days):
    out = subprocess.run(
        [sys.executable, "-m", "commands.cli", "predict",
         "--model", str(two_days["folder"] / "export" / "impressions"),
         "--input", str(two_days["rows"])],
        capture_output=True, text=True, check=True, cwd=REPO,
    )
    predictions = [json.loads(line) for line in out.stdout.splitlines()]
    assert len(predictions) == 200
    assert "version 2" in out.stderr
    for task in ("click", "conversion", "watch_time"):
        served = np.array([p[task] for p in predictions])
        np.testing.assert_allclose(served, two_days["day2"][0][f"pred_{task}"], atol=1e-5)
    click = np.array([p["click"] for p in predictions])
    assert np.all((click > 0) & (click < 1))


def _train_one_worker(config_path: Path, date: str, out: Path) -> tuple[dict, str]:
    """One trainer process with no cluster: its dump and its stderr."""
    out.mkdir()
    done = subprocess.run([sys.executable, WORKER, str(config_path), date, str(out)],
                          env={**os.environ, "PYTHONPATH": REPO, "TF_CONFIG": ""},
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    return dict(np.load(out / "worker-0.npz")), done.stderr


def _crash_day1(small_project, folder: Path) -> Path:
    """Day 1 on two workers, 2 steps per call of the train function and a backup every 3
    steps: backups land at the call boundary past step 3 (step 4); the chief dies at the end
    of step 6, the first call past step 5, before that call's backup, leaving its lease on
    model_dir behind (os._exit: no cleanup)."""
    broken = config_in(small_project, folder,
                       train={"backup_every_steps": 3, "steps_per_execution": 2})
    ports = free_ports(2)
    (folder / "crash").mkdir()
    procs = [
        subprocess.Popen(
            [sys.executable, WORKER, str(broken), DAYS[0], str(folder / "crash")],
            env={**cluster_env(2, i, ports), "PYTHONPATH": REPO, "CRASH_WORKER_AFTER": "0:5"},
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )
        for i in range(2)
    ]
    codes = [p.wait(timeout=300) for p in procs]  # the survivor fails by itself, no hang
    assert codes[0] == 3 and codes[1] != 0
    lease = json.loads((folder / "model" / "lease.json").read_text())
    assert lease["pid"] == procs[0].pid  # the dead chief's
    backups = [b.name for b in (folder / "model" / "backup").iterdir()]
    assert backups == [f"dt={DAYS[0]}-from-0-workers-2"]
    index = (folder / "model" / "backup" / backups[0] / "checkpoint").read_text()
    assert 'model_checkpoint_path: "ckpt-4"' in index  # the first call boundary past step 3
    assert not (folder / "model" / "state.json").exists()
    return broken


def test_killed_worker_then_relaunch_matches_the_uninterrupted_run(two_days, small_project,
                                                                   tmp_path):
    # The same config as the uninterrupted day 1 above, with a backup every 3 steps.
    broken = _crash_day1(small_project, tmp_path)

    relaunched = _train(broken, DAYS[0], tmp_path / "relaunch")  # the same command again
    steady = two_days["day1"][0]
    assert int(relaunched[0]["global_step"]) == int(steady["global_step"])
    for a, b in zip(_weights(relaunched[0]), _weights(steady), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
    assert not os.listdir(tmp_path / "model" / "backup")  # removed once the day is complete
    assert not (tmp_path / "model" / "lease.json").exists()  # taken back (dead pid), released


def test_next_day_on_one_worker_with_two_shards_continues_from_the_two_worker_checkpoint(
        two_days, small_project, tmp_path):
    config = config_in(small_project, tmp_path, embeddings={"num_shards": 2})
    shutil.copytree(two_days["folder"] / "model-after-day1", tmp_path / "model")
    dump, _ = _train_one_worker(config, DAYS[1], tmp_path / "day2")
    assert int(dump["num_replicas"]) == 1
    steps = [m["rows"]["written"] // BATCH for m in two_days["manifests"][:2]]
    assert int(dump["global_step"]) == steps[0] + steps[1]  # continued, not restarted
    state = json.loads((tmp_path / "model" / "state.json").read_text())
    assert [(d["date"], d["version"]) for d in state["days"]] == [(DAYS[0], 1), (DAYS[1], 2)]
    # Day 1's 3-shard table was re-partitioned into 2: rows no day-2 example touched keep their
    # day-1 values (and accumulators) exactly; a fresh table would match none of them.
    for key in ("table/embed_fused_d16_replicated",
                "slot/embed_fused_d16_replicated/accumulator"):
        before, after = two_days["day1"][0][key], dump[key]
        kept = np.all(before == after, axis=1).mean()
        assert 0.2 < kept < 1.0, f"{key}: {kept:.2f} of rows kept"
    import tensorflow as tf

    latest = tf.train.latest_checkpoint(str(tmp_path / "model" / "checkpoints"))
    # checkpoint keys name layers by position: ".../layer_with_weights-0/part_1_of_2/..."
    names = [name for name, _ in tf.train.list_variables(latest) if "/part_" in name]
    assert any("/part_1_of_2/" in n for n in names)
    assert not any("_of_3/" in n for n in names)


def test_relaunch_on_another_worker_count_restarts_the_day_from_the_last_checkpoint(
        two_days, small_project, tmp_path):
    broken = _crash_day1(small_project, tmp_path)  # leaves a 2-worker backup at step 3
    dump, stderr = _train_one_worker(broken, DAYS[0], tmp_path / "one-worker")
    # the whole day again (its data is split by worker count, so the backup cannot be reused),
    # from the last checkpoint: for day 1, the seeded new model
    steps = two_days["manifests"][0]["rows"]["written"] // BATCH
    assert int(dump["global_step"]) == steps
    assert "new model" in stderr and "resuming from the backup" not in stderr
    assert not os.listdir(tmp_path / "model" / "backup")  # the stale backup is gone too


def test_a_replicated_table_becomes_model_parallel_on_the_next_day(two_days, small_project,
                                                                 tmp_path, capfd):
    """Day 2 on two workers with the id tables placed model_parallel, from day 1's replicated
    checkpoint: each worker takes its rows (w::2) of the saved table and trains on."""
    embeddings = {"num_shards": 3, "tables": {"user_id": {"placement": "model_parallel"},
                                              "item_id": {"placement": "model_parallel"}}}
    from multitower.config import load_config
    from trainer.memory import stitched_table_bytes, table_estimates

    # A memory budget each worker's share fits, the whole stitched tables do not: progressive
    # validation then runs on both workers, each with its share.
    probe = load_config(config_in(small_project, tmp_path, embeddings=embeddings))
    share = sum(t.bytes for t in table_estimates(probe, workers=2))
    whole = stitched_table_bytes(probe)
    assert share < whole
    config = config_in(small_project, tmp_path, embeddings=embeddings,
                       train={"memory_budget_bytes": (share + whole) // 2})
    shutil.copytree(two_days["folder"] / "model-after-day1", tmp_path / "model")
    (tmp_path / "day2").mkdir()
    worker = str(Path(__file__).with_name("model_parallel_day_main.py"))
    status = run_local_workers([worker, str(config), DAYS[1], str(tmp_path / "day2"),
                                str(two_days["rows"])], 2, extra_env={"PYTHONPATH": REPO},
                               echo_workers=True)
    assert status == 0
    saved = two_days["day1"][0]["table/embed_fused_d16_replicated"]
    for w in range(2):
        rows = np.load(tmp_path / "day2" / f"worker-{w}.npz")["rows/embed_fused_d16_model_parallel"]
        assert rows.shape == saved[w::2].shape
        # rows no day-2 example touched keep their day-1 values exactly; others trained on
        kept = np.all(rows == saved[w::2], axis=1).mean()
        assert 0.2 < kept < 1.0, f"worker {w}: {kept:.2f} of rows kept"
    state = json.loads((tmp_path / "model" / "state.json").read_text())
    assert state["days"][-1]["tables"] == {"embed_fused_d16_model_parallel": {
        "placement": "model_parallel", "workers": 2, "exchange": "all_to_all"}}
    # progressive validation ran on both workers, each with its share, before training
    assert f"progressive validation on {DAYS[1]} before training it (every worker, each with " \
        "its share of the tables)" in capfd.readouterr().err
    history = [json.loads(line) for line in
               (tmp_path / "model" / "metrics_history.jsonl").read_text().splitlines()]
    checked = [r for r in history if r["kind"] == "progressive_validation"
               and r["date"] == DAYS[1]]
    assert len(checked) == 1 and 0.0 < checked[0]["tasks"]["click"]["auc"] < 1.0
