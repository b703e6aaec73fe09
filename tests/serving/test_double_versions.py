"""The TF Serving double's versions: polling, warmup before serving, the policy, labels, failures.

Each test serves a copy of the project (`copy_project`) whose export folder it changes while
the server runs, as a daily export does.
"""

import os
import shutil
import threading

import grpc
import numpy as np
import pytest
import requests

from tests.served_model import copy_project, export_version
from tests.serving.double_server import (
    MODEL,
    model_config_text,
    project_server,
    reference_outputs,
    version_path,
)

pytestmark = pytest.mark.integration


def states(server):
    return {s.version: s.state for s in server.statuses(MODEL)}


def predict(server, rows, path=MODEL):
    answer = requests.post(f"{server.rest_url}/v1/models/{path}:predict",
                           json={"instances": rows})
    return answer.status_code, answer.json()


def scores(answer):
    return np.array([row["click"] for row in answer["predictions"]])


def publish(folder, version_folder):
    """Moves a finished version folder in with one rename, as an export publishes."""
    os.rename(version_folder, os.path.join(folder, os.path.basename(version_folder)))


def test_new_version_serves_after_its_warmup_and_the_oldest_unloads(served_project, tmp_path):
    project = copy_project(served_project, tmp_path / "copy")
    rows = served_project["tensor_rows"][:4]
    entered, release = threading.Event(), threading.Event()

    def hold_version_3(model, version):  # after load and warmup, before serving
        if version == 3:
            entered.set()
            release.wait(60)

    server = project_server(project, poll_seconds=0.2, before_available=hold_version_3)
    try:
        assert states(server) == {2: "AVAILABLE", 1: "AVAILABLE"}
        export_version(project["config"], 3, seed=33)
        assert entered.wait(60)
        # latest: 2 names [2, 3]: version 1 goes first (2 keeps serving), 3 is still LOADING.
        assert states(server) == {3: "LOADING", 2: "AVAILABLE", 1: "END"}
        status, answer = predict(server, rows)
        assert status == 200
        np.testing.assert_allclose(
            scores(answer), reference_outputs(version_path(project, 2), rows)["click"],
            rtol=1e-5)
        assert predict(server, rows, f"{MODEL}/versions/3")[1] == {
            "error": "Servable not found for request: Specific(ranker, 3)"}
        assert server.labels(MODEL) == {"stable": 1, "canary": 2}

        release.set()
        server.wait_for_version(MODEL, 3)
        server.wait_for_label(MODEL, "canary", 3)
        server.wait_for_label(MODEL, "stable", 2)
        assert states(server) == {3: "AVAILABLE", 2: "AVAILABLE", 1: "END"}
        expected = reference_outputs(version_path(project, 3), rows)["click"]
        for path in (MODEL, f"{MODEL}/labels/canary"):
            np.testing.assert_allclose(scores(predict(server, rows, path)[1]), expected,
                                       rtol=1e-5)
    finally:
        release.set()
        server.stop()


def test_broken_versions_never_serve(served_project, tmp_path):
    project = copy_project(served_project, tmp_path / "copy")
    base, staging = project["export_base"], tmp_path / "staging"
    (staging / "3").mkdir(parents=True)
    (staging / "3" / "saved_model.pb").write_bytes(b"not a SavedModel")
    shutil.copytree(version_path(project, 2), staging / "4")
    (staging / "4" / "assets.extra" / "tf_serving_warmup_requests").write_bytes(b"\x07" * 64)
    rows = served_project["tensor_rows"][:3]

    with project_server(project, poll_seconds=0.2) as server:
        publish(base, staging / "3")
        publish(base, staging / "4")
        three = server.wait_for_version(MODEL, 3, "END")
        four = server.wait_for_version(MODEL, 4, "END")
        assert (three.error_code, three.error_message) == (
            "DATA_LOSS", f"Can't parse {base}/3/saved_model.pb as binary proto")
        assert four.error_code == "DATA_LOSS"
        assert four.error_message.endswith(". Please verify your warmup data is in TFRecord "
                                           "format.")
        # Named versions [3, 4] both failed: of the unnamed ones serving, the lowest unloads
        # and the other keeps serving (availability preserving).
        assert states(server) == {4: "END", 3: "END", 2: "AVAILABLE", 1: "END"}
        status, answer = predict(server, rows)
        assert status == 200
        np.testing.assert_allclose(
            scores(answer), reference_outputs(version_path(project, 2), rows)["click"],
            rtol=1e-5)
        assert predict(server, rows, f"{MODEL}/versions/4") == (
            404, {"error": "Servable not found for request: Specific(ranker, 4)"})
        # The rules now name 3 and 4, which are not available: the labels stay where they were.
        assert server.labels(MODEL)["canary"] == 2
        body = requests.get(f"{server.rest_url}/v1/models/{MODEL}/versions/3").json()
        assert body["model_version_status"][0]["status"] == {
            "error_code": "DATA_LOSS", "error_message": three.error_message}


def test_a_running_request_finishes_on_a_version_being_unloaded(served_project):
    from tensorflow_serving.config import model_server_config_pb2

    from serving.double.models import AVAILABLE, UNLOADING, ModelVersions
    from serving.double.servable import TFServingError

    config = model_server_config_pb2.ModelConfig(
        name=MODEL, base_path=served_project["export_base"], model_platform="tensorflow")
    config.model_version_policy.specific.versions.append(1)
    model = ModelVersions(config)
    model.poll()
    config.model_version_policy.specific.versions[:] = [2]
    with model.acquire() as servable:
        assert servable.version == 1
        model.configure(config)
        polling = threading.Thread(target=model.poll)
        polling.start()
        # Version 2 loads first (1 serves meanwhile), then 1 waits for this request.
        assert model.wait(lambda m: {s.version: s.state for s in m.statuses()}
                          == {2: AVAILABLE, 1: UNLOADING}, 60)
        with pytest.raises(TFServingError, match=r"Specific\(ranker, 1\)"), \
                model.acquire(version=1):
            pass
        rows = served_project["tensor_rows"][:2]
        _, outputs = servable.predict("", {name: _tensor(servable, name, [r[name] for r in rows])
                                           for name in rows[0]})
        np.testing.assert_allclose(outputs["click"], reference_outputs(
            version_path(served_project, 1), rows)["click"], rtol=1e-5)
    polling.join(60)
    assert [(s.version, s.state) for s in model.statuses()] == [(2, AVAILABLE), (1, "END")]
    model.unload_all()


def _tensor(servable, name, values):
    import tensorflow as tf

    from serving.double.servable import Tensor

    dtype = servable.signatures["serving_default"].inputs[name].dtype
    return Tensor(np.array(values, dtype=tf.as_dtype(dtype).as_numpy_dtype
                           if dtype != tf.string.as_datatype_enum else object), dtype)


def test_model_config_file_is_followed(served_project, tmp_path):
    from serving.double import (
        ServeError,
        model_config_file_reloader,
        read_model_config_file,
        start_server,
    )

    path = tmp_path / "models.config"

    def write(labels, stamp):
        path.write_text(model_config_text([{
            "name": MODEL, "base_path": served_project["export_base"],
            "policy": "all { }", "labels": labels}]))
        os.utime(path, (stamp, stamp))  # a distinct modification time per version of the file

    write({"stable": 1}, 1_000_000)
    with start_server(read_model_config_file(str(path)),
                      serving_config=served_project["config"].serving, poll_seconds=0.2,
                      config_reloader=model_config_file_reloader(str(path))) as server:
        assert server.labels(MODEL) == {"stable": 1}
        write({"stable": 2, "canary": 2}, 2_000_000)
        server.wait_for_label(MODEL, "stable", 2)
        assert server.labels(MODEL) == {"stable": 2, "canary": 2}
        with grpc.insecure_channel(server.grpc_target) as channel:
            from tensorflow_serving.apis import get_model_status_pb2, model_service_pb2_grpc

            request = get_model_status_pb2.GetModelStatusRequest()
            request.model_spec.name = MODEL
            answer = model_service_pb2_grpc.ModelServiceStub(channel).GetModelStatus(request)
            assert [s.version for s in answer.model_version_status] == [2, 1]
        with pytest.raises(ServeError, match="did not reach AVAILABLE"):
            server.wait_for_version(MODEL, 9, timeout=0.1)


def test_model_config_file_refusals(tmp_path):
    from serving.double import read_model_config_file
    from serving.double.model_config import ModelConfigError
    from serving.double.models import VersionManager

    path = tmp_path / "models.config"
    path.write_text("model_config_list { config { nam: 'x' } }")
    with pytest.raises(ModelConfigError, match=f"{path}: not a text ModelServerConfig"):
        read_model_config_file(str(path))
    path.write_text(model_config_text([{"name": "m", "base_path": "relative/path"}]))
    with pytest.raises(ModelConfigError, match="Expected model m to have an absolute path"):
        VersionManager(read_model_config_file(str(path)), source=str(path))
