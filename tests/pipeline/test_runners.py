"""The engines `preprocess` runs on: the default DirectRunner engine and Beam's portable path.

One small day (two gzipped JSON lines files and one with bad rows) is preprocessed twice: on the
default engine (no Beam arguments, the suite's in-memory setting removed: `multi_processing`
with one worker process per core), and by `multitower preprocess --runner=PortableRunner
--job_endpoint=localhost:PORT --environment_type=LOOPBACK` against Beam's job service, started
here as its own process, the path a pipeline takes to a Flink or Spark job server. Both publish
the same bytes: TFRecords, rejected rows and the manifest but its time stamp.
"""

import copy
import gzip
import json
import logging
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner

from multitower.beam_options import MODE_ENV, local_cores
from pipeline.generate import generate_logs
from pipeline.preprocess import run_preprocess
from pipeline.read_logs import batches, unbatch
from pipeline.validate import LogLine, LogRow
from tests.published_files import published_files

pytestmark = pytest.mark.integration
DATE = "2026-05-01"
ROWS = 400


def _wait_for_job_service(process: subprocess.Popen, port_file: Path, log: Path) -> int:
    """The port the job service listens on, once it accepts connections."""
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"the job service exited ({process.returncode}):\n"
                               f"{log.read_text()[-2000:]}")
        if port_file.exists():
            port = int(port_file.read_text())
            try:
                socket.create_connection(("localhost", port), timeout=1).close()
                return port
            except OSError:
                pass
        time.sleep(0.1)
    raise RuntimeError(f"the job service did not listen within 60 s:\n{log.read_text()[-2000:]}")


@pytest.fixture(scope="module")
def job_service(tmp_path_factory) -> Iterator[dict]:
    """Beam's local job service in a process of its own, on a port the system chose."""
    folder = tmp_path_factory.mktemp("job-service")
    port_file, log = folder / "port", folder / "service.log"
    with log.open("wb") as out:
        process = subprocess.Popen(
            [sys.executable, "-m", "apache_beam.runners.portability.local_job_service_main",
             "-p", "0", "--port_file", str(port_file)],
            stdout=out, stderr=subprocess.STDOUT)
    try:
        yield {"port": _wait_for_job_service(process, port_file, log), "log": log}
    finally:
        process.terminate()
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


class _Timings(logging.Handler):
    """Keeps the timings (and the worker count) `run_preprocess` logs."""

    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.found = None

    def emit(self, record: logging.LogRecord) -> None:
        if hasattr(record, "timings"):
            self.found = record.timings


def _config(example_raw: dict, root: Path, name: str) -> Path:
    raw = copy.deepcopy(example_raw)
    raw["data"].update(logs=f"{root}/logs/dt={{date}}", tfrecords=f"{root}/{name}/tfrecords",
                       rejected=f"{root}/{name}/rejected", num_shards=3)
    path = root / f"{name}.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


@pytest.fixture(scope="module")
def runs(tmp_path_factory, example_raw, job_service) -> dict:
    """The day, preprocessed on the default engine and through the job service."""
    from commands.cli import main
    from multitower.config import load_config

    root = tmp_path_factory.mktemp("runners")
    generate_logs(str(root / "logs"), DATE, 1, ROWS, seed=5)
    logs = root / "logs" / f"dt={DATE}"
    row = json.loads(gzip.decompress((logs / "part-00000.jsonl.gz").read_bytes()).splitlines()[0])
    bad = ["not json", json.dumps({"user_id": "u1"}), "", json.dumps({**row, "click": 3}),
           "[1, 2]"]
    (logs / "extra.jsonl").write_text("\n".join(bad) + "\n")

    with pytest.MonkeyPatch.context() as patch:
        patch.delenv(MODE_ENV, raising=False)  # a user's shell: the default engine
        handler = _Timings()
        logger = logging.getLogger("multitower.pipeline")
        logger.addHandler(handler)
        old_level = logger.level
        logger.setLevel(logging.INFO)
        try:
            direct = run_preprocess(load_config(_config(example_raw, root, "direct")), DATE)
        finally:
            logger.removeHandler(handler)
            logger.setLevel(old_level)

    result = CliRunner().invoke(main, [
        "preprocess", "--config", str(_config(example_raw, root, "portable")), "--date", DATE,
        "--runner=PortableRunner", f"--job_endpoint=localhost:{job_service['port']}",
        "--environment_type=LOOPBACK"])
    return {"root": root, "direct": direct, "direct_timings": handler.found, "portable": result}


def test_portable_path_writes_the_same_bytes_as_the_default_engine(runs):
    assert runs["portable"].exit_code == 0, runs["portable"].output
    rows = runs["direct"]["rows"]
    assert rows == {"read": ROWS + 5, "written": ROWS, "rejected": 5}
    assert runs["portable"].output.strip().endswith(
        f"{DATE}: read {ROWS + 5}, written {ROWS}, rejected 5")
    direct = published_files(runs["root"] / "direct")
    portable = published_files(runs["root"] / "portable")
    assert sorted(direct) == sorted(portable)
    assert len([name for name in direct if name.endswith(".tfrecord.gz")]) == 3
    assert any(name.startswith("rejected/") for name in direct)
    for name, content in direct.items():
        assert portable[name] == content, f"{name} differs"


def test_each_run_used_the_engine_it_names(runs, job_service):
    # Without arguments: the DirectRunner's engine with one worker process per core.
    assert runs["direct_timings"]["workers"] == local_cores()
    assert runs["direct_timings"]["rows"] > 0
    # The portable run went through the job service (not quietly run in this process).
    assert "Completed job in" in job_service["log"].read_text()
    assert "with state DONE" in job_service["log"].read_text()


def test_records_cross_between_workers_in_batches():
    lines = [LogLine("a.jsonl", n, b'{"x": %d}' % n) for n in range(1, 6)]
    made = list(batches(lines, size=2))
    assert [(source, is_line, count) for source, is_line, count, _ in made] == [
        ("a.jsonl", True, 2), ("a.jsonl", True, 2), ("a.jsonl", True, 1)]
    assert all(type(blob) is bytes for *_, blob in made)  # Beam's coder copies bytes as they are
    assert [record for batch in made for record in unbatch(batch)] == lines
    rows = [LogRow("b.parquet", 1, {"x": 1.5, "tags": ["a", "b"], "y": None}, None, None),
            LogRow("b.parquet", 2, None, "wrong number of cells: 3", b"1,2,3")]
    made = list(batches(rows))
    assert len(made) == 1 and made[0][1:3] == (False, 2)
    assert [type(r) for r in unbatch(made[0])] == [LogRow, LogRow]
    assert list(unbatch(made[0])) == rows
    assert list(batches([])) == []
