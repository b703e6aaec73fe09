"""The client and `multitower query` against the TF Serving double, on real exports.

The double (`serving.double`) is the stand-in for TF Serving, which cannot run here; each side
is also checked on its own against hand-written exchanges from TF Serving's documentation
(`test_client_*`, `test_double_*`), so that here they cannot agree on a misreading.
"""

import json
import threading

import pytest
from click.testing import CliRunner

from commands.cli import main
from serving.grpc_client import GrpcClient
from serving.rest_client import RestClient
from tests.served_model import copy_project, export_version
from tests.serving.double_server import project_server, reference_outputs, version_path

pytestmark = pytest.mark.integration
OUTPUTS = {"click", "conversion", "ranking_score", "watch_time"}


@pytest.fixture(scope="module")
def server(served_project):
    """One double serving the project: versions 1 and 2, stable -> 1, canary -> 2."""
    with project_server(served_project) as running:
        yield running


def _query(server, project: dict, protocol: str, rows_path: str, out, *args: str):
    address = server.grpc_target if protocol == "grpc" else server.rest_url
    # --config: the pads of the config's list features, which TF Serving's metadata lacks
    result = CliRunner().invoke(main, ["query", "--server", address, "--protocol", protocol,
                                       "--model", "ranker", "--input", rows_path,
                                       "--output", str(out), "--batch-size", "128",
                                       "--config", project["config_path"], *args])
    assert result.exit_code == 0, result.output
    return [json.loads(line) for line in out.read_text().splitlines()], result


def _worst_difference(queried: list[dict], expected: dict) -> float:
    assert all(set(row) == OUTPUTS for row in queried)
    return max(abs(row[name] - float(expected[name][i]))
               for i, row in enumerate(queried) for name in OUTPUTS)


@pytest.mark.parametrize("protocol", ["grpc", "rest"])
def test_query_returns_the_in_process_scores_in_input_order(server, served_project, protocol,
                                                            tmp_path):
    queried, result = _query(server, served_project, protocol, served_project["rows_path"],
                             tmp_path / "scores.jsonl")
    expected = reference_outputs(version_path(served_project, 2),
                                 served_project["tensor_rows"])
    assert len(queried) == len(served_project["rows"]) == 600
    # scores are written rounded to 6 decimals, as `predict` writes them
    assert _worst_difference(queried, expected) <= 1e-5
    assert "600" in result.stderr


@pytest.mark.parametrize("protocol", ["grpc", "rest"])
@pytest.mark.parametrize(("selection", "version"), [
    (("--version", "1"), 1), (("--label", "stable"), 1), (("--label", "canary"), 2)])
def test_a_version_or_a_label_selects_whose_scores_come_back(
        server, served_project, protocol, selection, version, tmp_path):
    rows = served_project["rows"][:50]
    rows_path = tmp_path / "rows.jsonl"
    rows_path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    queried, _ = _query(server, served_project, protocol, str(rows_path),
                        tmp_path / "out.jsonl", *selection)
    tensors = served_project["tensor_rows"][:50]
    chosen = reference_outputs(version_path(served_project, version), tensors)
    other = reference_outputs(version_path(served_project, 3 - version), tensors)
    assert _worst_difference(queried, chosen) <= 1e-5
    assert _worst_difference(queried, other) > 1e-3  # the versions really differ


@pytest.mark.parametrize("protocol", ["grpc", "rest"])
def test_the_client_sends_the_tensors_the_trainer_reads_from_the_tfrecords(
        server, served_project, protocol):
    """Each row, checked by the client (lists cut and padded with the config's pads), is the
    row `trainer.export.parse_features` gives for its example in the day's TFRecords; and the
    client's scores of the rows are the in-process scores of those TFRecord rows."""
    import numpy as np
    import tensorflow as tf

    from multitower.origin import ORIGIN_LINE
    from multitower.records import origin_spec
    from serving.lists import config_pads
    from tests.served_model import day_examples
    from trainer.export import parse_features

    config = served_project["config"]
    examples = day_examples(config, 64)
    lines = tf.io.parse_example(examples, origin_spec())[ORIGIN_LINE].numpy()
    rows = [served_project["rows"][line - 1] for line in lines]  # rows.jsonl is the log's order
    parsed = parse_features(config, examples)
    client_class = GrpcClient if protocol == "grpc" else RestClient
    address = server.grpc_target if protocol == "grpc" else server.rest_url
    with client_class(address, "ranker", pads=config_pads(config)) as client:
        checked = client.check_rows(rows)
        scores = client.predict(rows).scores
    def encoded(value):  # strings as the parsed tensors hold them
        return [encoded(v) for v in value] if isinstance(value, list) else (
            value.encode() if isinstance(value, str) else value)

    for name, values in parsed.items():
        sent = np.array([encoded(row[name]) for row in checked], dtype=values.dtype)
        assert sent.shape == values.shape, name
        np.testing.assert_array_equal(sent, values, err_msg=name)
    version_2 = tf.saved_model.load(version_path(served_project, 2)).signatures[
        "serving_default"]
    expected = version_2(**{name: tf.constant(values) for name, values in parsed.items()})
    for name in OUTPUTS:
        np.testing.assert_allclose(scores[name], expected[name].numpy(), rtol=1e-5, atol=1e-6)


def test_an_unknown_label_is_the_servers_refusal_in_one_line(server, served_project, tmp_path):
    result = CliRunner().invoke(main, ["query", "--server", server.grpc_target, "--model",
                                       "ranker", "--label", "nope", "--input",
                                       served_project["rows_path"]])
    assert result.exit_code == 1
    assert "nope" in result.stderr and "Traceback" not in result.stderr


@pytest.mark.slow
def test_a_new_version_appears_while_clients_query_and_no_request_fails(served_project, tmp_path):
    project = copy_project(served_project, tmp_path / "copy")
    rows = project["rows"][:8]
    with project_server(project, poll_seconds=0.2) as running:
        clients = [GrpcClient(running.grpc_target, "ranker", timeout=30),
                   RestClient(running.rest_url, "ranker", timeout=30)]
        checked = clients[0].check_rows(rows)
        for client in clients:
            client.describe()
        answered: list[int | None] = []  # the versions named by gRPC answers (REST names none)
        by_thread: dict[int, list[int | None]] = {}
        failures: list[BaseException] = []
        stop = threading.Event()

        def ask(client) -> None:
            mine = by_thread.setdefault(threading.get_ident(), [])
            while not stop.is_set():
                try:
                    version = client.score_batch(checked).version
                    mine.append(version)
                    answered.append(version)
                except BaseException as err:  # noqa: BLE001 (every failure is the finding)
                    failures.append(err)

        threads = [threading.Thread(target=ask, args=(c,)) for c in clients for _ in range(2)]
        for thread in threads:
            thread.start()
        try:
            export_version(project["config"], 3, seed=33)
            running.wait_for_version("ranker", 3)
            before = len(answered)
            running.wait_for_label("ranker", "canary", 3)
            # keep asking until version 3 has answered a few times over gRPC
            while answered[before:].count(3) < 5 and not failures:
                stop.wait(0.05)
        finally:
            stop.set()
            for thread in threads:
                thread.join()
            for client in clients:
                client.close()
        assert failures == []
        grpc_versions = [v for v in answered if v is not None]
        assert 2 in grpc_versions and 3 in grpc_versions
        # one thread's requests follow each other: once 3 answered it, 2 no longer does
        for versions in by_thread.values():
            if 3 in versions:
                assert 2 not in versions[versions.index(3):]
        states = {s.version: s.state for s in running.statuses("ranker")}
        assert states[3] == "AVAILABLE" and states[2] == "AVAILABLE" and states[1] == "END"
