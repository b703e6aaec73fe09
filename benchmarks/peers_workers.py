"""The timed parts of `benchmarks/peers.py`, each run in its own process and environment.

    python peers_workers.py multitower --data arrays.npz --passes 3 --export DIR --out s.npy
    <deepctr venv>/bin/python peers_workers.py deepctr --data arrays.npz --passes 3 \
        --steps-per-execution 16 --out scores.npy
    <torch venv>/bin/python peers_workers.py torch-rechub --data arrays.npz --passes 3 --out s.npy
    <venv>/bin/python peers_workers.py deepctr|torch-rechub --check   # imports the library

`multitower` runs in the project's venv and times the newest export's `serving_default`
signature; `deepctr` and `torch-rechub` train and score the same MMoE in their throwaway venvs
(see peers.py's docstring for what is timed). Each saves its test scores (rows x tasks) to
`--out` and prints its figures as one line, `RESULT {json}`. Only numpy and the library under
test are imported, so the file runs in any of the three environments.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from collections.abc import Callable

import numpy as np

TASKS = ("income", "marital")
BATCH, EMBEDDING_DIM, EXPERTS, EXPERT_UNITS, TOWER_UNITS = 1024, 8, 8, 64, 32


def _names(arrays: dict) -> tuple[list[str], list[str]]:
    return ([f"cat_{c:02d}" for c in range(arrays["cat_train"].shape[1])],
            [f"num_{j:02d}" for j in range(arrays["num_train"].shape[1])])


def _timed_passes(passes: int, run: Callable[[], object]) -> tuple[list[float], object]:
    """Seconds of each of `passes` calls of `run` after one warm-up call, and the last result."""
    result = run()
    seconds = []
    for _ in range(passes):
        started = time.perf_counter()
        result = run()
        seconds.append(time.perf_counter() - started)
    return seconds, result


def run_multitower(arrays: dict, passes: int, export: str) -> dict:
    """Times the newest export's `serving_default` on batches of raw test rows."""
    import tensorflow as tf

    from multitower.exports import newest_version

    version, path = newest_version(export)
    signature = tf.saved_model.load(path).signatures["serving_default"]
    categorical, numeric = _names(arrays)
    cat, raw = arrays["cat_test"], arrays["raw_test"]
    batches = []
    for start in range(0, len(cat), BATCH):
        batch = {name: tf.constant([f"v{v}" for v in cat[start:start + BATCH, c]])
                 for c, name in enumerate(categorical)}
        batch.update({name: tf.constant(raw[start:start + BATCH, j])
                      for j, name in enumerate(numeric)})
        batches.append(batch)

    def run() -> np.ndarray:
        outputs = [signature(**batch) for batch in batches]
        return np.stack([np.concatenate([o[t].numpy() for o in outputs]) for t in TASKS], 1)

    seconds, scores = _timed_passes(passes, run)
    return {"predict": [len(cat) / s for s in seconds], "scores": scores,
            "notes": f"export version {version}, serving_default"}


def _no_version_check() -> None:
    """Makes deepctr's import-time question to PyPI (a thread) fail at once, without a request."""
    import requests

    def offline(*args: object, **kwargs: object) -> None:
        raise requests.ConnectionError("version check skipped by peers_workers.py")

    requests.get = offline


def run_deepctr(arrays: dict, passes: int, spe: int) -> dict:
    """Trains DeepCTR's MMOE on the arrays for `passes` epochs, then predicts the test rows."""
    _no_version_check()
    import tensorflow as tf
    from deepctr.feature_column import DenseFeat, SparseFeat
    from deepctr.models import MMOE

    tf.keras.utils.set_random_seed(0)
    categorical, numeric = _names(arrays)
    columns = [SparseFeat(name, vocabulary_size=int(k), embedding_dim=EMBEDDING_DIM)
               for name, k in zip(categorical, arrays["cards"], strict=True)]
    columns += [DenseFeat(name, 1) for name in numeric]
    model = MMOE(columns, num_experts=EXPERTS, expert_dnn_hidden_units=(EXPERT_UNITS,),
                 gate_dnn_hidden_units=(), tower_dnn_hidden_units=(TOWER_UNITS,),
                 l2_reg_embedding=0.0, dnn_use_bn=True, task_types=("binary", "binary"),
                 task_names=TASKS)
    model.compile(optimizer=tf.keras.optimizers.Adam(1e-3),
                  loss=["binary_crossentropy", "binary_crossentropy"],
                  metrics=["binary_crossentropy"], steps_per_execution=spe)

    def inputs(split: str) -> dict[str, np.ndarray]:
        x = {name: arrays[f"cat_{split}"][:, c] for c, name in enumerate(categorical)}
        x.update({name: arrays[f"num_{split}"][:, j] for j, name in enumerate(numeric)})
        return x

    rows = len(arrays["y_train"])

    class Clock(tf.keras.callbacks.Callback):
        """Examples per second of each epoch after its first call (`spe` steps)."""

        def __init__(self) -> None:
            super().__init__()
            self.rates: list[float] = []

        def on_epoch_begin(self, epoch: int, logs: dict | None = None) -> None:
            self.first: tuple[float, int] | None = None

        def on_train_batch_end(self, batch: int, logs: dict | None = None) -> None:
            if self.first is None:  # `batch` is the last step of the call
                self.first = (time.perf_counter(), min((batch + 1) * BATCH, rows))

        def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
            at, done = self.first
            self.rates.append((rows - done) / (time.perf_counter() - at))

    clock = Clock()
    labels = arrays["y_train"].astype(np.float32)
    model.fit(inputs("train"), [labels[:, 0], labels[:, 1]], batch_size=BATCH, epochs=passes,
              shuffle=True, verbose=0, callbacks=[clock])
    x_test = inputs("test")
    seconds, scores = _timed_passes(passes, lambda: model.predict(x_test, batch_size=BATCH,
                                                                  verbose=0))
    return {"train": clock.rates, "predict": [len(arrays["y_test"]) / s for s in seconds],
            "scores": np.concatenate(scores, 1),
            "notes": f"TensorFlow {tf.__version__}, {type(model).__module__.split('.')[0]}, "
                     f"steps_per_execution {spe}"}


def run_torch_rechub(arrays: dict, passes: int) -> dict:
    """Trains torch-rechub's MMOE with a plain loop for `passes` passes, then predicts."""
    import torch
    from torch_rechub.basic.features import DenseFeature, SparseFeature
    from torch_rechub.models.multi_task import MMOE

    torch.manual_seed(0)
    categorical, numeric = _names(arrays)
    features = [SparseFeature(name, vocab_size=int(k), embed_dim=EMBEDDING_DIM)
                for name, k in zip(categorical, arrays["cards"], strict=True)]
    features += [DenseFeature(name) for name in numeric]
    model = MMOE(features, task_types=["classification", "classification"], n_expert=EXPERTS,
                 expert_params={"dims": [EXPERT_UNITS]},
                 tower_params_list=[{"dims": [TOWER_UNITS]}] * len(TASKS))
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    loss_fn = torch.nn.BCELoss()

    def tensors(split: str) -> tuple[torch.Tensor, torch.Tensor]:
        return (torch.from_numpy(arrays[f"cat_{split}"].astype(np.int64)),
                torch.from_numpy(arrays[f"num_{split}"]))

    def batch_input(cat: torch.Tensor, num: torch.Tensor) -> dict[str, torch.Tensor]:
        x = {name: cat[:, c] for c, name in enumerate(categorical)}
        x.update({name: num[:, j] for j, name in enumerate(numeric)})
        return x

    cat, num = tensors("train")
    labels = torch.from_numpy(arrays["y_train"].astype(np.float32))
    rows, rates = len(labels), []
    for _ in range(passes):
        model.train()
        order = torch.randperm(rows)
        first: tuple[float, int] | None = None
        for start in range(0, rows, BATCH):
            index = order[start:start + BATCH]
            if len(index) < 2:  # batch norm needs two rows
                continue
            predicted = model(batch_input(cat[index], num[index]))
            loss = sum(loss_fn(predicted[:, t], labels[index, t]) for t in range(len(TASKS)))
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            if first is None:
                first = (time.perf_counter(), len(index))
        rates.append((rows - first[1]) / (time.perf_counter() - first[0]))
    model.eval()
    cat_test, num_test = tensors("test")

    def predict() -> np.ndarray:
        with torch.no_grad():
            return torch.cat([model(batch_input(cat_test[s:s + BATCH], num_test[s:s + BATCH]))
                              for s in range(0, len(cat_test), BATCH)]).numpy()

    seconds, scores = _timed_passes(passes, predict)
    return {"train": rates, "predict": [len(cat_test) / s for s in seconds], "scores": scores,
            "notes": f"torch {torch.__version__}, {torch.get_num_threads()} threads, own loop"}


def main() -> None:
    """Runs one worker and prints its `RESULT` line."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("worker", choices=["multitower", "deepctr", "torch-rechub"])
    parser.add_argument("--check", action="store_true", help="only import the library")
    parser.add_argument("--data")
    parser.add_argument("--passes", type=int, default=3)
    parser.add_argument("--steps-per-execution", type=int, default=1)
    parser.add_argument("--export")
    parser.add_argument("--out")
    args = parser.parse_args()
    if args.check:
        if args.worker == "deepctr":
            _no_version_check()
            import deepctr.models  # noqa: F401
        else:
            import torch_rechub.models.multi_task  # noqa: F401
        print("RESULT {}")
        return
    arrays = dict(np.load(args.data))
    if args.worker == "multitower":
        result = run_multitower(arrays, args.passes, args.export)
    elif args.worker == "deepctr":
        result = run_deepctr(arrays, args.passes, args.steps_per_execution)
    else:
        result = run_torch_rechub(arrays, args.passes)
    np.save(args.out, np.asarray(result.pop("scores"), np.float64).reshape(-1, len(TASKS)))
    result["predict_median"] = statistics.median(result["predict"])
    print("RESULT " + json.dumps(result))
    sys.stdout.flush()


if __name__ == "__main__":
    main()
