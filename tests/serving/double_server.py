"""Helpers of the TF Serving double's tests: start it on free ports, compute reference scores.

`project_server(project, ...)` starts `serving.double.start_server` in-process on ports the OS
chooses, for a project of `tests.served_model`; `cli_server(config_path)` runs the real
`multitower serve` in a subprocess and reads its ports from its startup lines;
`reference_outputs` runs a version's signature in this process with `tf.saved_model.load`,
the numbers the double must answer.
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[2]
MODEL = "ranker"
_LOADED: dict[str, object] = {}


def small_batches(config: object, max_batch_size: int) -> object:
    """The project's serving section with batching on and `max_batch_size`."""
    batching = config.serving.batching.model_copy(update={"enabled": True,
                                                          "max_batch_size": max_batch_size})
    return config.serving.model_copy(update={"batching": batching})


def project_server(project: dict, *, serving_config: object = None, poll_seconds: float = 1.0,
                   **kwargs: object) -> object:
    """`start_server` for the project's model (its models.config and label rules)."""
    from serving.double import project_model_config, start_server

    model_config, resolver = project_model_config(project["config"])
    return start_server(model_config, serving_config=serving_config or project["config"].serving,
                        rest_port=0, grpc_port=0, poll_seconds=poll_seconds,
                        label_resolver=resolver, **kwargs)


def version_path(project: dict, version: int) -> str:
    return os.path.join(project["export_base"], str(version))


def _load(path: str) -> object:
    import tensorflow as tf

    if path not in _LOADED:
        _LOADED[path] = tf.saved_model.load(path)
    return _LOADED[path]


def columns(rows: list[dict]) -> dict[str, list]:
    """Rows as columns: `{feature: [value per row]}`."""
    return {name: [row[name] for row in rows] for name in rows[0]}


def reference_outputs(path: str, rows: list[dict], signature: str = "serving_default"
                      ) -> dict[str, np.ndarray]:
    """`{output: (batch,)}` of the version at `path`, computed in this process.

    `rows` hold the tensors' rows: a list feature's list already cut and padded to its length
    (`tests.served_model.tensor_rows`).
    """
    import tensorflow as tf

    function = _load(path).signatures[signature]
    specs = function.structured_input_signature[1]
    tensors = {name: tf.constant(values, dtype=specs[name].dtype)
               for name, values in columns(rows).items()}
    return {name: tensor.numpy() for name, tensor in function(**tensors).items()}


def input_dtypes(path: str) -> dict[str, object]:
    """`{input: tf.DType}` of the version's `serving_default`."""
    specs = _load(path).signatures["serving_default"].structured_input_signature[1]
    return {name: spec.dtype for name, spec in specs.items()}


def wait_until(condition: object, timeout: float = 60.0, interval: float = 0.05) -> None:
    """Polls `condition()` until true; fails the test after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout} s")
        time.sleep(interval)


@contextlib.contextmanager
def cli_server(config_path: str, *extra: str, timeout: float = 120.0
               ) -> Iterator[tuple[subprocess.Popen, int, int, list[str]]]:
    """Runs `multitower serve --config C --rest-port 0 --grpc-port 0`; yields its ports.

    Yields `(process, rest_port, grpc_port, stderr lines so far)` once it prints `ready`; on
    exit the process is stopped (SIGTERM) if it still runs.
    """
    process = subprocess.Popen(
        [sys.executable, "-m", "commands.cli", "serve", "--config", config_path,
         "--rest-port", "0", "--grpc-port", "0", *extra],
        cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    lines: list[str] = []
    ready = threading.Event()

    def read() -> None:
        for line in process.stderr:
            lines.append(line.rstrip("\n"))
            if line.startswith("ready:"):
                ready.set()

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    try:
        deadline = time.monotonic() + timeout
        while not ready.wait(0.1):
            if process.poll() is not None or time.monotonic() > deadline:
                raise AssertionError("multitower serve did not get ready:\n" + "\n".join(lines))
        ports = next(re.search(r"rest_port (\d+), grpc_port (\d+)", line)
                     for line in lines if "rest_port" in line)
        yield process, int(ports.group(1)), int(ports.group(2)), lines
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(timeout=60)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        reader.join(timeout=10)


def write_half_plus_three(base: Path, version: int = 123) -> str:
    """TF Serving's toy model of its REST docs: `y = 0.5 * x + 3`, one float input, one output.

    Written at `<base>/<version>` (no warmup file: TF Serving treats it as optional).
    """
    import tensorflow as tf

    class HalfPlusThree(tf.Module):
        @tf.function(input_signature=[tf.TensorSpec([None], tf.float32, name="x")])
        def serve(self, x: tf.Tensor) -> dict:
            return {"y": 0.5 * x + 3.0}

    module = HalfPlusThree()
    tf.saved_model.save(module, str(base / str(version)),
                        signatures={"serving_default": module.serve})
    return str(base)


def model_config_text(models: list[dict]) -> str:
    """A text ModelServerConfig as a user writes it: name, base_path, policy, labels."""
    parts = []
    for model in models:
        labels = "".join(f"    version_labels {{ key: \"{k}\" value: {v} }}\n"
                         for k, v in model.get("labels", {}).items())
        policy = model.get("policy", "latest { num_versions: 1 }")
        parts.append(f"  config {{\n    name: \"{model['name']}\"\n"
                     f"    base_path: \"{model['base_path']}\"\n"
                     f"    model_platform: \"tensorflow\"\n"
                     f"    model_version_policy {{ {policy} }}\n"
                     f"{labels}  }}\n")
    return "model_config_list {\n" + "".join(parts) + "}\n"
