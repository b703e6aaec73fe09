"""Every stage on s3:// paths, against a local S3-compatible server (moto) on loopback.

The server runs in its own process (a moto server inside a process that also writes to S3
through TensorFlow hangs some TensorFlow writes). The stages run as `multitower` commands in
fresh processes, as users run them: Beam writes through boto3, TensorFlow through
tensorflow-io, and both find the server through `AWS_ENDPOINT_URL_S3`. This test process looks
at the bucket with boto3 only: a process that used tensorflow-io's S3 file system aborts at exit
(tensorflow/io#2039), which the commands avoid and pytest would not.
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tests.race import race

pytestmark = [pytest.mark.integration, pytest.mark.slow]
REPO = str(Path(__file__).resolve().parents[1])
EXAMPLE = Path(REPO) / "examples" / "impressions.yaml"
BUCKET = "multitower-test"
DAYS = ["2026-04-01", "2026-04-02"]
ROWS = 1200

_SERVER = """
import sys
from moto.server import ThreadedMotoServer
server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
server.start()
host, port = server.get_host_and_port()
print(f"http://{host}:{port}", flush=True)
sys.stdin.read()  # until the test closes stdin
server.stop()
"""


@pytest.fixture(scope="module")
def s3():
    """A moto S3 server on a free loopback port, one bucket, and the environment that points
    the commands at it (standard AWS variables only)."""
    boto3 = pytest.importorskip("boto3")
    server = subprocess.Popen([sys.executable, "-c", _SERVER], stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, text=True)
    try:
        endpoint = server.stdout.readline().strip()
        assert endpoint.startswith("http://127.0.0.1:"), endpoint
        env = {
            **{k: v for k, v in os.environ.items() if k not in ("TF_CONFIG", "S3_ENDPOINT")},
            "AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
            "AWS_REGION": "us-east-1", "AWS_DEFAULT_REGION": "us-east-1",
            "AWS_ENDPOINT_URL_S3": endpoint,
            # fail in seconds, not minutes, if the server is gone
            "AWS_RETRY_MODE": "standard", "AWS_MAX_ATTEMPTS": "3",
            "PYTHONPATH": REPO,
        }
        client = boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1",
                              aws_access_key_id="testing", aws_secret_access_key="testing")
        client.create_bucket(Bucket=BUCKET)
        yield {"env": env, "client": client}
    finally:
        server.stdin.close()
        server.wait(timeout=30)


def _keys(client, prefix: str) -> list[str]:
    pages = client.get_paginator("list_objects_v2").paginate(Bucket=BUCKET, Prefix=prefix)
    return sorted(o["Key"] for page in pages for o in page.get("Contents", []))


def _read(client, key: str) -> str:
    return client.get_object(Bucket=BUCKET, Key=key)["Body"].read().decode()


def _multitower(s3: dict, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "commands.cli", *args], env=s3["env"],
                          cwd=REPO, capture_output=True, text=True, timeout=900)


@pytest.fixture(scope="module")
def on_s3(s3, tmp_path_factory):
    """Logs uploaded to the bucket (one bad row added), then preprocess and train two days,
    with every path of the config on s3://."""
    from pipeline.generate import generate_logs

    local = tmp_path_factory.mktemp("s3-project")
    generate_logs(str(local / "logs"), DAYS[0], len(DAYS), ROWS, seed=5)
    for path in sorted((local / "logs").rglob("*.jsonl.gz")):
        s3["client"].upload_file(str(path), BUCKET, f"logs/{path.relative_to(local / 'logs')}")
    s3["client"].put_object(Bucket=BUCKET, Key=f"logs/dt={DAYS[0]}/extra.jsonl",
                            Body=b'{"user_id": "u1"}\n')
    raw = yaml.safe_load(EXAMPLE.read_text())
    for feature in raw["data"]["features"]:
        if feature["type"] == "categorical":
            feature["hash_buckets"] = min(feature["hash_buckets"], 2000)
    root = f"s3://{BUCKET}"
    raw["data"].update(logs=f"{root}/logs/dt={{date}}", tfrecords=f"{root}/tfrecords",
                       rejected=f"{root}/rejected", num_shards=2)
    raw["model"]["embeddings"] = {"num_shards": 2}
    raw["train"].update(model_dir=f"{root}/model", export_dir=f"{root}/export", batch_size=128,
                        shuffle_buffer=500, backup_every_steps=3)
    config = local / "config.yaml"
    config.write_text(yaml.safe_dump(raw))
    runs = {f"preprocess {d}": _multitower(s3, "preprocess", "--config", str(config), "--date", d)
            for d in DAYS}
    runs["train"] = _multitower(s3, "train", "--config", str(config),
                                "--dates", f"{DAYS[0]}:{DAYS[1]}", "--workers", "2")
    return {"config": config, "local": local, "runs": runs}


def test_commands_succeed_and_leave_with_their_own_exit_status(on_s3, s3):
    for name, run in on_s3["runs"].items():
        assert run.returncode == 0, f"{name}:\n{run.stderr[-4000:]}"
        assert "pure virtual method called" not in run.stderr  # tensorflow/io#2039 avoided
    # a refusal after S3 was used keeps its status 1 (not the abort's 134) and its message
    again = _multitower(s3, "train", "--config", str(on_s3["config"]), "--date", DAYS[0])
    assert again.returncode == 1, again.stderr[-3000:]
    assert f"day {DAYS[0]} is already trained" in again.stderr


def test_preprocess_writes_records_rejections_and_manifest_to_the_bucket(on_s3, s3):
    client = s3["client"]
    for day in DAYS:
        keys = _keys(client, f"tfrecords/dt={day}/")
        assert f"tfrecords/dt={day}/_MANIFEST.json" in keys
        manifest = json.loads(_read(client, f"tfrecords/dt={day}/_MANIFEST.json"))
        rows = manifest["rows"]
        assert rows["read"] == rows["written"] + rows["rejected"]
        assert len(manifest["files"]) == 2
        assert all(f"tfrecords/dt={day}/{f}" in keys for f in manifest["files"])
    first = json.loads(_read(client, f"tfrecords/dt={DAYS[0]}/_MANIFEST.json"))["rows"]
    assert (first["read"], first["rejected"]) == (ROWS + 1, 1)
    rejected = [k for k in _keys(client, f"rejected/dt={DAYS[0]}/") if k.endswith(".jsonl")]
    refused = [json.loads(line) for k in rejected for line in _read(client, k).splitlines()]
    assert len(refused) == 1 and refused[0]["line"] == 1
    assert refused[0]["source"] == f"s3://{BUCKET}/logs/dt={DAYS[0]}/extra.jsonl"
    assert "missing field" in refused[0]["reason"]
    assert not _keys(client, f"rejected/dt={DAYS[1]}/")  # nothing refused, no file
    assert not [k for k in _keys(client, "") if ".tmp-" in k]  # no staging left behind


def test_training_checkpoints_state_and_exports_land_in_the_bucket(on_s3, s3):
    client = s3["client"]
    state = json.loads(_read(client, "model/state.json"))
    assert [(d["date"], d["version"]) for d in state["days"]] == [(DAYS[0], 1), (DAYS[1], 2)]
    steps = state["global_step"]
    checkpoints = _keys(client, "model/checkpoints/")
    assert "model/checkpoints/checkpoint" in checkpoints
    assert f"model/checkpoints/ckpt-{steps}.index" in checkpoints
    assert not _keys(client, "model/backup/")  # mid-day backups removed once the day is done
    lines = _read(client, "model/metrics_history.jsonl").splitlines()
    history = [json.loads(line) for line in lines]
    assert [h["date"] for h in history if h["kind"] == "progressive_validation"] == [DAYS[1]]
    assert _keys(client, "model/tensorboard/")
    exports = _keys(client, "export/impressions/")
    for version in (1, 2):
        assert f"export/impressions/{version}/saved_model.pb" in exports
    assert not [k for k in exports if ".tmp-" in k]


def test_predict_loads_the_newest_export_from_the_bucket(on_s3, s3, tmp_path):
    import gzip

    day = sorted((on_s3["local"] / "logs" / f"dt={DAYS[1]}").glob("*.jsonl.gz"))[0]
    rows = tmp_path / "rows.jsonl"
    with gzip.open(day, "rt") as f, rows.open("w") as out:
        out.writelines(line for _, line in zip(range(50), f, strict=False))
    run = _multitower(s3, "predict", "--model", f"s3://{BUCKET}/export/impressions",
                      "--input", str(rows))
    assert run.returncode == 0, run.stderr[-3000:]
    scores = [json.loads(line) for line in run.stdout.splitlines()]
    assert len(scores) == 50
    assert all(0 < s["click"] < 1 and s["watch_time"] >= 0 for s in scores)
    assert f"version 2 (s3://{BUCKET}/export/impressions/2)" in run.stderr


def test_two_trainings_at_once_on_the_bucket_one_is_refused_by_the_lease(on_s3, s3):
    # Runs last: it trains the second day again (--force), as version 3.
    client = s3["client"]
    command = [sys.executable, "-m", "commands.cli", "train", "--config", str(on_s3["config"]),
               "--date", DAYS[1], "--force"]
    first, second = race(command, command, lambda: bool(_keys(client, "model/lease.json")),
                         env=s3["env"])
    assert first.returncode == 0, first.stderr[-3000:]
    assert second.returncode == 1, second.stderr[-3000:]
    assert f"Error: model_dir s3://{BUCKET}/model is in use by run " in second.stderr
    assert "pure virtual method called" not in second.stderr
    state = json.loads(_read(client, "model/state.json"))
    assert [(d["date"], d["version"]) for d in state["days"]] == [(DAYS[0], 1), (DAYS[1], 3)]
    assert not _keys(client, "model/lease.json")  # released
