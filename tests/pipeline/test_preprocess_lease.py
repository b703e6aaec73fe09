"""A preprocess run of a day another run holds is refused by the day's lease, untouched."""

import copy
import subprocess
import sys

import pytest
import yaml

from multitower.lease import Lease
from multitower.manifest import day_lease, read_manifest
from pipeline.generate import generate_logs
from tests.small_project import REPO

DATE = "2026-01-01"


@pytest.mark.integration
def test_a_day_held_by_another_run_is_refused_then_preprocessed_once_free(tmp_path,
                                                                          example_raw):
    generate_logs(str(tmp_path / "logs"), DATE, 1, 3000, seed=4)
    raw = copy.deepcopy(example_raw)
    raw["data"].update(logs=f"{tmp_path}/logs/dt={{date}}", tfrecords=f"{tmp_path}/tfrecords",
                       rejected=f"{tmp_path}/rejected", num_shards=2)
    config = tmp_path / "config.yaml"
    config.write_text(yaml.safe_dump(raw))
    # a staging folder a killed run left behind: the lease holder removes it
    stale = tmp_path / "tfrecords" / f".dt={DATE}.tmp-0123456789ab"
    stale.mkdir(parents=True)
    lease = day_lease(str(tmp_path / "tfrecords"), DATE)
    command = [sys.executable, "-m", "commands.cli", "preprocess", "--config", str(config),
               "--date", DATE]
    # Another run (this test process, with its own run id) holds the day.
    held = Lease(lease, f"day {DATE} under {tmp_path}/tfrecords").acquire()
    refused = subprocess.run(command, capture_output=True, text=True, cwd=REPO, timeout=300)
    assert refused.returncode == 1, refused.stderr[-3000:]
    refusal = refused.stderr.strip().splitlines()[-1]
    assert refusal.startswith(f"Error: day {DATE} under {tmp_path}/tfrecords is in use by run "
                              f"{held.run_id} (host ")
    assert refusal.endswith("(data.lease_ttl_seconds)")
    assert "Traceback" not in refused.stderr
    assert stale.exists()  # nothing was touched by the refused run
    held.release()
    done = subprocess.run(command, capture_output=True, text=True, cwd=REPO, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    manifest = read_manifest(str(tmp_path / "tfrecords"), DATE)
    assert manifest["rows"]["read"] == 3000 == manifest["rows"]["written"]
    # the stale staging folder is gone, and so is the lease
    assert sorted(p.name for p in (tmp_path / "tfrecords").iterdir()) == [f"dt={DATE}"]
