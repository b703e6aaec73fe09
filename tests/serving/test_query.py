"""`multitower query` through the command line, against recording servers of both protocols.

The servers are test doubles (see `recording_servers`): they answer the hand-written status
and metadata of `test_client_rest` / `test_client_grpc`, and score each row from its `position`
(`click = position / 8` ...), so that every score shows which row it belongs to.
"""

import io
import json

import pytest
import tensorflow as tf
from click.testing import CliRunner

from commands.cli import main
from serving.query import query_file
from serving.rest_client import RestClient
from tests.serving.recording_servers import (
    RecordingGrpcServer,
    RecordingHttpServer,
    unused_port,
)
from tests.serving.test_client_grpc import ANSWERS, predict_answer
from tests.serving.test_client_rest import METADATA, STATUS

pytestmark = pytest.mark.integration

ROW = {"user_id": "u1", "item_id": "i9", "hour": 7, "item_price": 19.5}


def scores_for(positions: list[int]) -> dict[str, list[float]]:
    return {"click": [p / 8 for p in positions], "conversion": [p / 16 for p in positions],
            "ranking_score": [p / 32 for p in positions],
            "watch_time": [p * 1.5 for p in positions]}


def shown(position: int) -> dict[str, float]:
    return {name: values[0] for name, values in scores_for([position]).items()}


def rest_answer(request):
    if request.path.endswith(":predict"):
        if "inputs" in request.body:
            return 200, {"outputs": scores_for(request.body["inputs"]["position"])}
        positions = [row["position"] for row in request.body["instances"]]
        columns = scores_for(positions)
        return 200, {"predictions": [{n: v[i] for n, v in columns.items()}
                                     for i in range(len(positions))]}
    return 200, STATUS if request.path == "/v1/models/ranker" else METADATA


def grpc_predict(request):
    return predict_answer(request, scores_for(tf.make_ndarray(request.inputs["position"]).tolist()))


class Server:
    """A recording server of one protocol, and what the tests ask of it."""

    def __init__(self, protocol: str):
        self.protocol = protocol
        self.double = (RecordingHttpServer(rest_answer) if protocol.startswith("rest") else
                       RecordingGrpcServer({**ANSWERS, "Predict": grpc_predict}))

    def args(self) -> list[str]:
        protocol, _, form = self.protocol.partition("-")
        args = ["--server", self.double.address, "--protocol", protocol, "--model", "ranker",
                "--retries", "1"]
        return args + (["--rest-format", form] if form else [])

    def batches(self) -> list[int]:
        """Rows per predict request received."""
        if isinstance(self.double, RecordingHttpServer):
            bodies = [r.body for r in self.double.requests if r.path.endswith(":predict")]
            return [len(b["inputs"]["position"]) if "inputs" in b else len(b["instances"])
                    for b in bodies]
        return [len(tf.make_ndarray(r.inputs["position"])) for r in self.double.calls("Predict")]

    def where(self) -> str:
        return (f"http://{self.double.address} (rest)" if self.protocol.startswith("rest") else
                f"{self.double.address} (grpc)")


@pytest.fixture(params=["grpc", "rest", "rest-row"])
def server(request):
    served = Server(request.param)
    with served.double:
        yield served


def _query(*args: str):
    return CliRunner().invoke(main, ["query", *args])


def _write(path, lines: list) -> None:
    path.write_text("".join((line if isinstance(line, str) else json.dumps(line)) + "\n"
                            for line in lines))


def test_scores_keep_the_input_order_across_batches(server, tmp_path):
    rows = tmp_path / "rows.jsonl"
    _write(rows, [{**ROW, "position": p} for p in range(1, 8)])
    out = tmp_path / "scores.jsonl"
    result = _query(*server.args(), "--input", str(rows), "--output", str(out),
                    "--batch-size", "2")
    assert result.exit_code == 0, result.output
    assert server.batches() == [2, 2, 2, 1]
    assert [json.loads(line) for line in out.read_text().splitlines()] == [
        shown(p) for p in range(1, 8)]
    assert result.stderr.splitlines()[-1] == (
        f"scored 7 rows with model 'ranker' version 2 at {server.where()}")


def test_scores_go_to_stdout_without_an_output(server, tmp_path):
    rows = tmp_path / "rows.jsonl"
    _write(rows, [{**ROW, "position": 3}])
    result = _query(*server.args(), "--input", str(rows))
    assert result.exit_code == 0, result.output
    assert [json.loads(line) for line in result.stdout.splitlines()] == [shown(3)]


BAD = [
    ("not json", "invalid JSON: Expecting value: line 1 column 1 (char 0)"),
    ({k: v for k, v in ROW.items() if k != "hour"} | {"position": 1}, "missing field 'hour'"),
    ({**ROW, "position": 1, "click": 1},
     "unknown field 'click': signature 'serving_default' takes no such input"),
    ({**ROW, "position": "1"}, "field 'position': expected an integer, got str '1'"),
]


def test_skip_invalid_sends_the_valid_rows_and_writes_the_invalid_ones(server, tmp_path):
    lines = []
    for i, (bad, _) in enumerate(BAD):
        lines += [{**ROW, "position": 10 + i}, bad]
    rows = tmp_path / "rows.jsonl"
    _write(rows, lines)
    out = tmp_path / "scores.jsonl"
    result = _query(*server.args(), "--input", str(rows), "--output", str(out),
                    "--batch-size", "3", "--skip-invalid")
    assert result.exit_code == 0, result.output
    assert [json.loads(line) for line in out.read_text().splitlines()] == [
        {"line": 2 * i + 1, **shown(10 + i)} for i in range(len(BAD))]
    rejected = (tmp_path / "scores.jsonl.rejected.jsonl").read_text().splitlines()
    assert [json.loads(line) for line in rejected] == [
        {"source": str(rows), "line": 2 * i + 2, "reason": reason,
         "raw": bad if isinstance(bad, str) else json.dumps(bad)}
        for i, (bad, reason) in enumerate(BAD)]
    assert server.batches() == [3, 1]
    assert result.stderr.splitlines()[-1].endswith(
        f"; skipped 4 invalid rows, written with their reasons to {out}.rejected.jsonl")


def test_invalid_rows_refuse_the_file_before_anything_is_sent(server, tmp_path):
    lines = [{**ROW, "position": 1}]
    for i in range(25):
        lines += [BAD[i % len(BAD)][0], {**ROW, "position": i}]
    rows = tmp_path / "rows.jsonl"
    _write(rows, lines)
    out = tmp_path / "scores.jsonl"
    result = _query(*server.args(), "--input", str(rows), "--output", str(out))
    assert result.exit_code == 1, result.output
    assert server.batches() == []
    assert not out.exists() and list(tmp_path.iterdir()) == [rows]
    message = result.stderr.splitlines()
    assert message[0] == (f"Error: {rows}: 25 invalid rows, so nothing was sent to TF Serving "
                          f"(--skip-invalid sends the valid rows and writes the invalid ones "
                          f"with their reasons):")
    assert message[1:21] == [f"  {rows}:{2 * i + 2}: {BAD[i % len(BAD)][1]}" for i in range(20)]
    assert message[21:] == ["  ... and 5 more"]
    assert result.stdout == ""


def test_a_version_and_a_label_together_are_refused_before_any_request(server, tmp_path):
    rows = tmp_path / "rows.jsonl"
    _write(rows, [{**ROW, "position": 1}])
    result = _query(*server.args(), "--input", str(rows), "--version", "1", "--label", "canary")
    assert result.exit_code == 2
    assert "--version and --label cannot be used together" in result.stderr
    assert server.double.requests == []


@pytest.mark.parametrize("protocol", ["grpc", "rest"])
def test_a_server_that_is_not_running_fails_clearly_and_writes_nothing(protocol, tmp_path):
    rows = tmp_path / "rows.jsonl"
    _write(rows, [{**ROW, "position": 1}])
    out = tmp_path / "scores.jsonl"
    port = unused_port()
    result = _query("--server", f"127.0.0.1:{port}", "--protocol", protocol, "--model", "ranker",
                    "--retries", "1", "--input", str(rows), "--output", str(out))
    assert result.exit_code == 1
    assert result.stderr.startswith(
        f"Error: {'http://' * (protocol == 'rest')}127.0.0.1:{port}: TF Serving did not answer "
        f"the status request for model 'ranker' after 2 attempts over ")
    assert "Traceback" not in result.output
    assert not out.exists() and list(tmp_path.iterdir()) == [rows]


def test_a_missing_input_is_refused_before_the_server_is_asked(server, tmp_path):
    missing = tmp_path / "rows.jsonl"
    result = _query(*server.args(), "--input", str(missing))
    assert result.exit_code == 1
    assert result.stderr == f"Error: {missing}: no such file\n"
    assert server.double.requests == []


def test_query_file_with_a_progress_bar_scores_every_row(tmp_path):
    rows = tmp_path / "rows.jsonl"
    _write(rows, [{**ROW, "position": p} for p in range(6)])
    scores = io.StringIO()
    with RecordingHttpServer(rest_answer) as double, \
            RestClient(double.address, "ranker", batch_size=1) as client:
        outcome = query_file(client, str(rows), scores, None, progress=True)
    assert (outcome.scored, outcome.invalid, outcome.versions) == (6, 0, ())
    assert [json.loads(line) for line in scores.getvalue().splitlines()] == [
        shown(p) for p in range(6)]


def test_rejected_needs_skip_invalid(tmp_path):
    result = _query("--server", "127.0.0.1:1", "--model", "ranker", "--input",
                    str(tmp_path / "rows.jsonl"), "--rejected", str(tmp_path / "bad.jsonl"))
    assert result.exit_code == 2
    assert "--rejected is only used with --skip-invalid" in result.stderr
