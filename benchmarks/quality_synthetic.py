"""Part (a) of `benchmarks/quality.py`: the MMoE paper's synthetic experiment, at its scale.

Data, as Ma et al. (KDD 2018, sec. 3.2) build it: x ~ N(0, I_d), d = 100; orthogonal unit vectors
u1, u2; w1 = c u1, w2 = c (p u1 + sqrt(1 - p^2) u2), c = 1, so p is the cosine between the task
weights; y_i = w_i.x + sum_{j=1..m} sin(alpha_j w_i.x + beta_j) + eps_i, m = 10, eps_i ~ N(0, 0.01)
(variance: std 0.1, the noise floor of the MSE). The paper does not say how alpha and beta are
drawn; here alpha_j, beta_j ~ N(0, 1) (`--sin-std`), once per data set, shared by both tasks.
How nonlinear the tasks are depends on that draw: a linear fit leaves ~7% of the label variance
with data seed 0, ~52% with seed 2 and all of it with seed 1, the default (`--data-seed`): the
seed where the tasks differ most (label Pearson correlation 0.06 at p = 0.5), where the paper's
claim should show most. One data set serves every correlation: u1, u2, alpha, beta, the rows x
and y1 (noise included) are the same, only w2 changes.

Models, the project's own layers at comparable parameter counts, as in the paper's synthetic
runs: a 113-unit shared bottom against MoE (one gate) and MMoE with 8 experts of 16 units; PLE
with 2 levels of 2 shared + 2 per-task experts of 16 units; every task then has a
`TaskTower([8])`. The loss is the sum of the two tasks' MSE; Adam with one learning rate for
every model.

The paper judged trainability, so every (model, correlation) is trained from `--inits` random
initializations, each with its own batch order (a fresh permutation of the rows per epoch, as
the paper's runs differed in "data and model initialization"; init k and its order are the same
for every model and correlation), and the table gives the distribution of the final training
loss (MSE over the whole training set after the last step) beside the held-out loss.

Cost: the inits of one model train side by side in ONE graph (`synthetic_model(kind, copies)`):
copy k has its own backbone and towers and reads its own batch, the objective is the sum of the
copies' objectives, so the gradient reaching copy k's weights is exactly that of its own loss and
its Adam moments are its own; `check_stack` verifies this at start (copy 0 of a stack against the
same initial weights trained alone on the same batches: identical predictions). Measured on a
shared 2-core machine (1-minute load ~4, other jobs included), the default run took 22-24 min:
the 120 direct runs (4 models x 3 correlations x 10 inits x 9.4k steps) 17.5-19 min, half of it
PLE's, and the trainer path (`quality_synthetic_trainer.py`: Beam over the 200k training rows,
4 `train_day`s, 4 x 100k rows scored) ~3.5 min.
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from pathlib import Path

import numpy as np

import multitower  # noqa: F401  (TF_USE_LEGACY_KERAS before TensorFlow)

# isort: split
import tensorflow as tf
import tf_keras as keras

from trainer.backbones import PLE, MMoE, MoE, SharedBottom
from trainer.heads import TaskTower

TASKS = ["t1", "t2"]
SYNTHETIC_MODELS = ("shared_bottom", "moe", "mmoe", "ple")
D, M = 100, 10  # input dimension and number of sines (the paper's sec. 3.3)
TOWER_UNITS = [8]
CURVE_POINTS_PER_EPOCH = 2  # points of the training curves
# The backbones' sizes, as the trainer's `model:` block spells them (`model.<backbone>`).
SIZES: dict[str, dict] = {
    "shared_bottom": {"units": [113]},
    "moe": {"num_experts": 8, "expert_units": [16]},
    "mmoe": {"num_experts": 8, "expert_units": [16]},
    "ple": {"levels": 2, "shared_experts": 2, "task_experts": 2, "expert_units": [16]},
}


def progress(message: str) -> None:
    """Prints a progress line to stderr."""
    print(f"[quality] {message}", file=sys.stderr, flush=True)


def synthetic_data(
    rows: int, split: int, correlations: list[float], seed: int, sin_std: float = 1.0,
    noise_std: float = 0.1, d: int = D, m: int = M,
) -> tuple[np.ndarray, dict[float, np.ndarray]]:
    """`rows` examples of split `split` (0 train, 1 held out): `x (rows, d)`, `{p: y (rows, 2)}`.

    u1, u2, alpha and beta depend on `seed` only: the splits of a seed describe the same two
    tasks. The rows and the noise depend on (seed, split), not on p: every correlation shares
    x and y1 (noise included), and y2 differs only through w2.
    """
    params = np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(0,)))
    q, _ = np.linalg.qr(params.normal(size=(d, 2)))  # two orthonormal columns
    u1, u2 = q[:, 0], q[:, 1]
    alpha = params.normal(0.0, sin_std, size=m)
    beta = params.normal(0.0, sin_std, size=m)
    rng = np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(1, split)))
    x = rng.normal(size=(rows, d))
    noise = rng.normal(0.0, noise_std, size=(rows, 2))
    c = 1.0

    def label(w: np.ndarray, eps: np.ndarray) -> np.ndarray:
        z = x @ w
        return z + np.sin(np.outer(z, alpha) + beta).sum(axis=1) + eps

    y1 = label(c * u1, noise[:, 0])
    labels = {}
    for p in correlations:
        w2 = c * (p * u1 + math.sqrt(max(0.0, 1.0 - p * p)) * u2)
        labels[p] = np.stack([y1, label(w2, noise[:, 1])], axis=1).astype(np.float32)
    return x.astype(np.float32), labels


def make_backbone(kind: str, name: str) -> keras.layers.Layer:
    """The backbone `kind` at the sizes of `SIZES`."""
    size = SIZES[kind]
    if kind == "shared_bottom":
        return SharedBottom(TASKS, size["units"], name=name)
    if kind in ("moe", "mmoe"):
        cls = MoE if kind == "moe" else MMoE
        return cls(TASKS, size["num_experts"], size["expert_units"], name=name)
    if kind == "ple":
        return PLE(TASKS, size["levels"], size["shared_experts"], size["task_experts"],
                   size["expert_units"], name=name)
    raise ValueError(f"unknown synthetic model {kind!r}; expected one of {SYNTHETIC_MODELS}")


def synthetic_model(kind: str, copies: int, d: int = D) -> keras.Model:
    """`copies` independent models `kind` side by side: `(b, copies, d)` -> `(b, copies, 2)`.

    Copy k reads `x[:, k]` (its own batch) and is `backbone_k` with the towers `t1_k`, `t2_k`;
    no weight is shared between copies. Initial weights are drawn in copy order from Keras'
    seeded generators.
    """
    x = keras.Input((copies, d), name="x")
    outputs = []
    for k in range(copies):
        per_task = make_backbone(kind, f"backbone_{k}")(x[:, k])
        towers = [TaskTower(TOWER_UNITS, "regression", name=f"{t}_{k}")(h)
                  for t, h in zip(TASKS, per_task, strict=True)]
        outputs.append(keras.layers.Concatenate(name=f"copy_{k}")(towers))  # (batch, 2)
    return keras.Model(x, tf.stack(outputs, axis=1), name=f"{kind}_x{copies}")


def params_per_copy(model: keras.Model) -> int:
    """Trainable weights of one copy of a `synthetic_model`."""
    copies = int(model.output.shape[1])
    return sum(int(np.prod(v.shape)) for v in model.trainable_variables) // copies


def copy_mse(model: keras.Model, x: np.ndarray, y: np.ndarray, batch: int = 4096) -> np.ndarray:
    """`(copies, 2)`: each copy's mean squared error on each task over all of `x`."""
    copies = int(model.output.shape[1])
    total = np.zeros((copies, len(TASKS)))
    for start in range(0, len(x), batch):
        rows = x[start:start + batch]
        pred = model(np.broadcast_to(rows[:, None], (len(rows), copies, rows.shape[1])),
                     training=False).numpy()  # (b, copies, 2)
        total += ((pred - y[start:start + batch, None, :]) ** 2).sum(axis=0, dtype=np.float64)
    return total / len(x)


def epoch_batches(rows: int, batch: int, copies: int, seed: int, epoch: int) -> np.ndarray:
    """`(rows // batch, copies, batch)` row indices: epoch `epoch`'s batches of every copy.

    Copy k's order is its own permutation of the rows (the remainder dropped), drawn from
    (seed, k, epoch) only: the same for copy k of every model and correlation, and whatever
    the number of copies.
    """
    steps = rows // batch
    out = np.empty((steps, copies, batch), np.int32)
    for k in range(copies):
        rng = np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(k, epoch)))
        out[:, k] = rng.permutation(rows)[:steps * batch].reshape(steps, batch)
    return out


class StackTrainer:
    """Trains every copy of a `synthetic_model`, each on its own batches, a chunk per call.

    The objective is the sum over copies and tasks of each task's batch MSE; copy k's weights
    get the gradient of its own two-task loss only, and Adam's moments are per weight.
    """

    def __init__(self, model: keras.Model, learning_rate: float) -> None:
        self.model = model
        self.optimizer = keras.optimizers.Adam(learning_rate)
        copies = int(model.output.shape[1])
        signature = [tf.TensorSpec((None, int(model.input.shape[-1])), tf.float32),
                     tf.TensorSpec((None, len(TASKS)), tf.float32),
                     tf.TensorSpec((None, copies, None), tf.int32)]  # one trace for any chunk
        self._run = tf.function(self._chunk, input_signature=signature)

    def _chunk(self, x: tf.Tensor, y: tf.Tensor, index: tf.Tensor) -> tf.Tensor:
        """`index (steps, copies, batch)`: rows of `x`, `y`; returns each copy's mean loss."""
        steps = tf.shape(index)[0]
        variables = self.model.trainable_variables
        total = tf.zeros([int(self.model.output.shape[1])])
        for i in tf.range(steps):
            rows = tf.transpose(index[i])  # (batch, copies)
            xb, yb = tf.gather(x, rows), tf.gather(y, rows)  # (batch, copies, d | 2)
            with tf.GradientTape() as tape:
                per_task = tf.reduce_mean(tf.square(self.model(xb, training=True) - yb),
                                          axis=0)  # (copies, 2)
                loss = tf.reduce_sum(per_task)
            grads = tape.gradient(loss, variables)
            self.optimizer.apply_gradients(zip(grads, variables, strict=True))
            total += tf.reduce_mean(per_task, axis=1)
        return total / tf.cast(steps, tf.float32)

    def run(self, x: tf.Tensor, y: tf.Tensor, index: np.ndarray) -> np.ndarray:
        """Trains on `index (steps, copies, batch)`; each copy's mean batch loss `(copies,)`."""
        return self._run(x, y, tf.constant(index, tf.int32)).numpy()


def train_copies(
    kind: str, copies: int, init_seed: int, x: tf.Tensor, y: tf.Tensor,
    args: argparse.Namespace,
) -> tuple[keras.Model, np.ndarray]:
    """Builds `copies` inits of `kind` (seeded) and trains them for `args.epochs` epochs.

    Returns the model and the training curve `(epochs * CURVE_POINTS_PER_EPOCH, copies)`: each
    copy's mean batch loss (MSE averaged over the tasks) over successive runs of steps.
    """
    keras.utils.set_random_seed(init_seed)
    model = synthetic_model(kind, copies)
    trainer = StackTrainer(model, args.learning_rate)
    curve = []
    for epoch in range(args.epochs):
        plan = epoch_batches(len(x), args.batch_size, copies, args.order_seed, epoch)
        curve += [trainer.run(x, y, part)
                  for part in np.array_split(plan, CURVE_POINTS_PER_EPOCH)]
    return model, np.array(curve)


def check_stack(kind: str, x: tf.Tensor, y: tf.Tensor, args: argparse.Namespace,
                copies: int = 3) -> float:
    """Copy 0 of a `copies`-stack against the same initial weights trained alone, same batches.

    Returns the largest absolute difference between their predictions on the first 4096 rows
    of `x` after `args.check_steps` steps (0, or float rounding, if the copies are independent).
    """
    keras.utils.set_random_seed(7)
    stack = synthetic_model(kind, copies)
    alone = synthetic_model(kind, 1)
    for name in ("backbone_0", "t1_0", "t2_0"):
        alone.get_layer(name).set_weights(stack.get_layer(name).get_weights())
    plan = epoch_batches(len(x), args.batch_size, copies, args.order_seed, 0)[:args.check_steps]
    StackTrainer(stack, args.learning_rate).run(x, y, plan)
    StackTrainer(alone, args.learning_rate).run(x, y, plan[:, :1])
    probe = np.asarray(x[:4096])[:, None]
    return float(np.max(np.abs(stack(np.repeat(probe, copies, axis=1))[:, 0].numpy()
                               - alone(probe)[:, 0].numpy())))


def label_stats(x: np.ndarray, labels: dict[float, np.ndarray], rows: int = 50_000
                ) -> dict[float, dict[str, float]]:
    """Per correlation: the labels' Pearson correlation, their variance, a linear fit's MSE.

    The linear fit (least squares on the first `rows` rows) shows how nonlinear the sines make
    the tasks: what it leaves above the noise floor only a nonlinear model can take.
    """
    design = np.c_[x[:rows], np.ones(min(rows, len(x)))].astype(np.float64)
    stats = {}
    for p, y in labels.items():
        target = y[:rows].astype(np.float64)
        coef, *_ = np.linalg.lstsq(design, target, rcond=None)
        stats[p] = {"pearson": float(np.corrcoef(y[:, 0], y[:, 1])[0, 1]),
                    "variance": float(y.var(axis=0).mean()),
                    "linear_mse": float(np.mean((design @ coef - target) ** 2))}
    return stats


def run_synthetic(args: argparse.Namespace, root: Path) -> None:
    """Part (a): data, the stacked direct runs, the trainer path, then the table and figures."""
    import quality_synthetic_report as report  # matplotlib only when the part runs
    from quality_synthetic_trainer import run_trainer_path

    started = time.perf_counter()
    seconds: dict[str, float] = {}
    correlations = list(dict.fromkeys(args.correlations))
    trainer_p = args.trainer_correlation
    if not -1.0 <= trainer_p <= 1.0:
        sys.exit(f"--trainer-correlation must be in [-1, 1], got {trainer_p}")
    x, labels = synthetic_data(args.train_rows, 0, sorted({*correlations, trainer_p}),
                               args.data_seed, args.sin_std, args.noise_std)
    x_held, labels_held = synthetic_data(args.test_rows, 1, sorted({*correlations, trainer_p}),
                                         args.data_seed, args.sin_std, args.noise_std)
    stats = label_stats(x, {p: labels[p] for p in correlations})
    seconds["data"] = time.perf_counter() - started
    steps = args.epochs * (args.train_rows // args.batch_size)
    progress(f"(a) data: {args.train_rows} train + {args.test_rows} held-out rows, "
             f"{steps} steps of {args.batch_size} ({seconds['data']:.0f} s)")

    t = time.perf_counter()
    x_t = tf.constant(x)
    checks = {kind: check_stack(kind, x_t, tf.constant(labels[correlations[0]]), args)
              for kind in args.models}
    seconds["stack check"] = time.perf_counter() - t
    progress("(a) stack check (copy 0 of 3 vs alone, max |prediction difference|): "
             + ", ".join(f"{k} {v:.1e}" for k, v in checks.items()))

    runs: dict[tuple[str, float], dict[str, np.ndarray]] = {}
    params: dict[str, int] = {}
    for p in correlations:
        y_t = tf.constant(labels[p])
        for kind in args.models:
            t = time.perf_counter()
            model, curve = train_copies(kind, args.inits, args.init_seed, x_t, y_t, args)
            trained = time.perf_counter() - t
            params[kind] = params_per_copy(model)
            runs[(kind, p)] = {"train": copy_mse(model, x, labels[p]),
                               "held": copy_mse(model, x_held, labels_held[p]), "curve": curve}
            seconds[f"direct {kind}"] = seconds.get(f"direct {kind}", 0.0) + (
                time.perf_counter() - t)
            progress(f"(a) p={p:.2f} {kind}: {args.inits} inits x {steps} steps in "
                     f"{trained:.0f} s; final train MSE median "
                     f"{np.median(runs[(kind, p)]['train'].mean(1)):.4f}, held-out "
                     f"{np.median(runs[(kind, p)]['held'].mean(1)):.4f}")
            keras.backend.clear_session()

    trainer, trainer_seconds = {}, {}
    if args.trainer_models:
        t = time.perf_counter()
        trainer, trainer_seconds = run_trainer_path(
            root / "trainer", args.trainer_models, SIZES, TOWER_UNITS,
            (x, labels[trainer_p]), (x_held, labels_held[trainer_p]), args, progress)
        seconds["trainer path"] = time.perf_counter() - t

    t = time.perf_counter()
    report.print_tables(args, runs, params, stats, checks, trainer, steps)
    paths = report.draw(Path(args.png), args, runs, trainer)
    seconds["report"] = time.perf_counter() - t
    report.print_timing(seconds, trainer_seconds, time.perf_counter() - started, paths)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The command-line options of part (a)."""
    group = parser.add_argument_group("(a) MMoE paper's synthetic regression")
    group.add_argument("--correlations", type=float, nargs="+", default=[0.5, 0.9, 1.0],
                       help="cosines p between the task weights")
    group.add_argument("--models", nargs="+", choices=SYNTHETIC_MODELS,
                       default=list(SYNTHETIC_MODELS))
    group.add_argument("--inits", type=int, default=10,
                       help="random initializations per model and correlation")
    group.add_argument("--train-rows", type=int, default=200_000)
    group.add_argument("--test-rows", type=int, default=100_000, help="held-out rows")
    group.add_argument("--epochs", type=int, default=12, help="passes over the training rows")
    group.add_argument("--batch-size", type=int, default=256)
    group.add_argument("--learning-rate", type=float, default=1e-3, help="Adam, every model")
    group.add_argument("--data-seed", type=int, default=1,
                       help="draws u1, u2, alpha, beta and the rows (one data set per run; "
                       "1: the most nonlinear tasks of seeds 0-2)")
    group.add_argument("--init-seed", type=int, default=1000,
                       help="seeds the inits (the same inits at every correlation)")
    group.add_argument("--sin-std", type=float, default=1.0,
                       help="standard deviation of alpha_j and beta_j")
    group.add_argument("--noise-std", type=float, default=0.1, help="standard deviation of eps")
    group.add_argument("--order-seed", type=int, default=2000,
                       help="seeds each init's batch order (init k: its own shuffle per epoch)")
    group.add_argument("--check-steps", type=int, default=200,
                       help="steps of the stack check (copy 0 of a stack vs alone)")
    group.add_argument("--trainer-models", nargs="*", choices=SYNTHETIC_MODELS,
                       default=list(SYNTHETIC_MODELS),
                       help="models also trained through multitower's flow (none: skip it)")
    group.add_argument("--trainer-correlation", type=float, default=0.5)
    group.add_argument("--trainer-seed", type=int, default=0, help="train.seed of those runs")
