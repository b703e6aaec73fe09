"""The tables and figures of part (a) (`quality_synthetic.py`).

`runs[(model, p)]` holds, for the inits of one model at correlation p: `train` and `held`, each
`(inits, 2)` MSE per task (the final training loss over the whole training set after the last
step, and the loss on the held-out rows), and `curve` `(points, inits)`, the mean batch loss
(averaged over the tasks) over each of `points` equal runs of steps. Every figure averages the
two tasks' MSE.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only, no display

# isort: split
import matplotlib.pyplot as plt
import numpy as np

LABELS = {"shared_bottom": "shared-bottom", "moe": "MoE (1 gate)", "mmoe": "MMoE",
          "ple": "PLE"}
COLORS = {"shared_bottom": "tab:red", "moe": "tab:orange", "mmoe": "tab:blue", "ple": "tab:green"}
DESCRIBED = {
    "shared_bottom": "shared-bottom [113]",
    "moe": "MoE 8 x [16], 1 gate",
    "mmoe": "MMoE 8 x [16], 2 gates",
    "ple": "PLE 2 lvl, 2 sh + 2/task x [16]",
}
# The trainer path agrees with the direct runs when its held-out MSE lies inside the direct
# inits' [min, max], or no farther from their mean than AGREE_SDS of their standard deviations:
# the trainer run is in effect one more init (another initial draw, another batch order), so it
# should fall among them; a broken pipeline (other data, steps, rates) lands far outside.
AGREE_SDS = 3.0


def _loss(run: dict[str, np.ndarray], key: str) -> np.ndarray:
    return run[key].mean(axis=1)  # (inits,): the mean of the tasks' MSE


def _lead(runs: dict, base: str, p: float, key: str) -> tuple[float, float]:
    """`base`'s mean minus MMoE's mean at p, and the standard error of that difference."""
    other, mmoe = _loss(runs[(base, p)], key), _loss(runs[("mmoe", p)], key)
    se = np.sqrt(other.var(ddof=1) / len(other) + mmoe.var(ddof=1) / len(mmoe))
    return float(other.mean() - mmoe.mean()), float(se)


def agreement(direct: np.ndarray, value: float) -> tuple[bool, float]:
    """`(agrees, z)`: whether `value` falls among `direct` (see `AGREE_SDS`), and its z-score."""
    z = float((value - direct.mean()) / direct.std(ddof=1))
    return bool(direct.min() <= value <= direct.max() or abs(z) <= AGREE_SDS), z


def print_tables(args: argparse.Namespace, runs: dict, params: dict[str, int], stats: dict,
                 checks: dict[str, float], trainer: dict[str, dict], steps: int) -> None:
    """The setup, the loss table, MMoE's lead over shared-bottom and the trainer path."""
    models, ps = args.models, list(dict.fromkeys(args.correlations))
    print()
    print("(a) MMoE paper's synthetic regression (Ma et al., KDD 2018, sec. 3.2 and 5): two "
          f"tasks, d=100, m=10, c=1, data seed {args.data_seed}")
    print(f"    alpha_j, beta_j ~ N(0, {args.sin_std:g}^2); eps ~ N(0, {args.noise_std:g}^2), so "
          f"the noise floor (Bayes MSE) is {args.noise_std ** 2:.4f}")
    print(f"    {args.train_rows} training rows, {args.test_rows} held-out rows; {args.epochs} "
          f"epochs = {steps} steps of {args.batch_size}; Adam lr {args.learning_rate:g}; loss "
          "t1 MSE + t2 MSE")
    print(f"    {args.inits} inits per model and correlation, each with its own batch order (a "
          f"fresh shuffle per epoch); init k and its order (init seed {args.init_seed}, order "
          f"seed {args.order_seed}) are the same for every model and correlation")
    print(f"    {'p':>6}{'label Pearson':>15}{'label var':>11}{'linear-fit MSE':>16}")
    for p in ps:
        s = stats[p]
        print(f"    {p:>6.2f}{s['pearson']:>15.3f}{s['variance']:>11.3f}{s['linear_mse']:>16.3f}")
    print("    models, each with a TaskTower [8] per task; the inits of a model train side by "
          "side in one graph;")
    print("    stack check = max |prediction difference| of copy 0 of a 3-copy stack vs the same "
          f"init trained alone, {args.check_steps} steps")
    for kind in models:
        print(f"    {DESCRIBED[kind]:<34}{params[kind]:>7d} params   stack check "
              f"{checks[kind]:.1e}")
    print()
    print("    MSE (mean of the two tasks) over the inits; train = final training loss, whole "
          "training set after the last step")
    header = (f"    {'p':>5}  {'model':<15}{'train mean±std':>17}{'min':>8}{'median':>8}"
              f"{'max':>8}  {'held-out mean±std':>19}{'held-train':>11}")
    print(header)
    print("    " + "-" * (len(header) - 4))
    for p in ps:
        for kind in models:
            train, held = _loss(runs[(kind, p)], "train"), _loss(runs[(kind, p)], "held")
            print(f"    {p:>5.2f}  {LABELS[kind]:<15}{f'{train.mean():.4f}±{train.std():.4f}':>17}"
                  f"{train.min():>8.4f}{np.median(train):>8.4f}{train.max():>8.4f}  "
                  f"{f'{held.mean():.4f}±{held.std():.4f}':>19}"
                  f"{(held - train).mean():>+11.4f}")
    for base in ("shared_bottom", "moe"):
        if base in models and "mmoe" in models:
            _print_lead(runs, base, ps)
    if trainer:
        _print_trainer(args, runs, params, trainer)


def _print_lead(runs: dict, base: str, ps: list[float]) -> None:
    """MMoE's lead over `base` per correlation, and whether it grows as the correlation falls."""
    print()
    print(f"    MMoE's lead over {LABELS[base]}: mean({LABELS[base]}) - mean(MMoE), ± standard "
          "error (positive: MMoE lower)")
    for p in sorted(ps, reverse=True):
        (tr, tr_se), (he, he_se) = _lead(runs, base, p, "train"), _lead(runs, base, p, "held")
        print(f"    p={p:.2f}: train {tr:+.4f} ± {tr_se:.4f}   held-out {he:+.4f} ± {he_se:.4f}")
    if len(ps) < 2:
        return
    high, low = max(ps), min(ps)
    for key, name in (("train", "final training loss"), ("held", "held-out loss")):
        leads = [_lead(runs, base, p, key)[0] for p in sorted(ps, reverse=True)]
        (lead_high, se_high) = _lead(runs, base, high, key)
        (lead_low, se_low) = _lead(runs, base, low, key)
        grows = (all(b > a for a, b in zip(leads, leads[1:], strict=False))
                 and lead_low - lead_high > 2 * np.hypot(se_high, se_low))
        print(f"    {name}: the lead {'GROWS' if grows else 'does NOT grow'} as p falls "
              f"(p={high:.2f}: {lead_high:+.4f}, p={low:.2f}: {lead_low:+.4f}; growing means "
              "rising at every step down and by more than 2 standard errors)")


def _print_trainer(args: argparse.Namespace, runs: dict, params: dict[str, int],
                   trainer: dict[str, dict]) -> None:
    p = args.trainer_correlation
    print()
    print(f"    trainer path at p={p:.2f}: YAML config -> Parquet logs -> run_preprocess -> "
          f"train_day (train.seed {args.trainer_seed}) -> export scored by Predictor")
    print(f"    agrees = held-out MSE inside the direct inits' [min, max], or within "
          f"{AGREE_SDS:g} standard deviations of their mean (z: the distance in standard "
          "deviations)")
    header = (f"    {'model':<15}{'steps':>7}{'params':>8}{'train':>9}{'held-out':>10}"
              f"{'direct held-out mean±std':>26}{'[min, max]':>20}{'z':>7}  verdict")
    print(header)
    print("    " + "-" * (len(header) - 4))
    for kind, result in trainer.items():
        if (kind, p) in runs:
            held = _loss(runs[(kind, p)], "held")
            ok, z = agreement(held, result["held"])
            spread = f"{held.mean():.4f}±{held.std(ddof=1):.4f}"
            span = f"[{held.min():.4f}, {held.max():.4f}]"
            cells = f"{spread:>26}{span:>20}{z:>+7.1f}  {'agrees' if ok else 'DISAGREES'}"
        else:
            cells = f"{'(no direct run at this p)':>26}"
        note = "" if result["params"] == params.get(kind) else f" (direct {params.get(kind)})"
        print(f"    {LABELS[kind]:<15}{result['steps']:>7d}{result['params']:>8d}"
              f"{result['train']:>9.4f}{result['held']:>10.4f}{cells}{note}")


def print_timing(seconds: dict[str, float], trainer_seconds: dict[str, float], total: float,
                 paths: list[Path]) -> None:
    """Wall time per phase and in all, then the figures' paths."""
    print()
    print("    wall time: " + ", ".join(f"{k} {v:.0f} s" for k, v in seconds.items()))
    if trainer_seconds:
        print("    trainer path: " + ", ".join(f"{k} {v:.0f} s"
                                               for k, v in trainer_seconds.items()))
    print(f"    part (a) total {total:.0f} s ({total / 60:.1f} min)")
    for path in paths:
        print(f"    figure: {path}")


def draw(folder: Path, args: argparse.Namespace, runs: dict, trainer: dict[str, dict]
         ) -> list[Path]:
    """`synthetic_loss.png`, `synthetic_final_loss.png` and `synthetic_curves.png`."""
    folder.mkdir(parents=True, exist_ok=True)
    ps = sorted(dict.fromkeys(args.correlations))
    paths = [folder / "synthetic_loss.png", folder / "synthetic_final_loss.png",
             folder / "synthetic_curves.png"]
    _draw_loss(paths[0], args, runs, ps, trainer)
    _draw_final(paths[1], args, runs, ps)
    _draw_curves(paths[2], args, runs, ps)
    return paths


def _draw_loss(path: Path, args: argparse.Namespace, runs: dict, ps: list[float],
               trainer: dict[str, dict]) -> None:
    fig, axes = plt.subplots(1, 2, figsize=(12, 5.6), sharey=True)
    width = 0.012 * (max(ps) - min(ps) or 1.0)
    for ax, key, title in ((axes[0], "train", "final training loss"),
                           (axes[1], "held", f"held-out loss ({args.test_rows} rows)")):
        for i, kind in enumerate(args.models):
            losses = [_loss(runs[(kind, p)], key) for p in ps]
            shift = (i - (len(args.models) - 1) / 2) * width
            xs = [p + shift for p in ps]
            ax.plot(xs, [np.median(v) for v in losses], "-o", color=COLORS[kind],
                    label=f"{LABELS[kind]} (median, min-max band)")
            ax.fill_between(xs, [v.min() for v in losses], [v.max() for v in losses],
                            color=COLORS[kind], alpha=0.15)
            for x, v in zip(xs, losses, strict=True):
                ax.scatter(np.full(len(v), x), v, s=9, color=COLORS[kind], alpha=0.6)
            if key == "held" and kind in trainer:
                ax.scatter([args.trainer_correlation + shift], [trainer[kind]["held"]],
                           marker="*", s=160, color=COLORS[kind], edgecolor="black", zorder=5)
        ax.axhline(args.noise_std ** 2, color="gray", linestyle="--", linewidth=1,
                   label=f"noise floor {args.noise_std ** 2:.3f}")
        ax.set_title(title)
        ax.set_xlabel("correlation p (cosine of the task weights)")
        ax.set_xticks(ps)
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("MSE, mean of the two tasks")
    if trainer:
        axes[1].scatter([], [], marker="*", s=120, color="white", edgecolor="black",
                        label=f"multitower trainer path, p={args.trainer_correlation:g} "
                        "(train_day, export scored)")
    handles, names = axes[1].get_legend_handles_labels()
    fig.legend(handles, names, loc="lower center", ncol=3, fontsize=9, frameon=False)
    fig.suptitle(f"MMoE paper's synthetic tasks: {args.inits} inits per model and correlation "
                 f"(dots), {args.train_rows} training rows, {args.epochs} epochs")
    fig.tight_layout(rect=(0, 0.13, 1, 1))
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _draw_final(path: Path, args: argparse.Namespace, runs: dict, ps: list[float]) -> None:
    fig, axes = plt.subplots(1, len(ps), figsize=(4.2 * len(ps), 4.4), sharey=True,
                             squeeze=False)
    for ax, p in zip(axes[0], ps, strict=True):
        data = [_loss(runs[(kind, p)], "train") for kind in args.models]
        box = ax.boxplot(data, widths=0.5, patch_artist=True, showfliers=False)
        for patch, kind in zip(box["boxes"], args.models, strict=True):
            patch.set_facecolor(COLORS[kind])
            patch.set_alpha(0.3)
        for i, (v, kind) in enumerate(zip(data, args.models, strict=True)):
            jitter = np.random.default_rng(i).uniform(-0.12, 0.12, len(v))
            ax.scatter(i + 1 + jitter, v, s=12, color=COLORS[kind])
        ax.set_xticks(range(1, len(args.models) + 1), [LABELS[k] for k in args.models],
                      rotation=20)
        ax.set_title(f"p = {p:.2f}")
        ax.grid(alpha=0.3, axis="y")
    axes[0][0].set_ylabel("final training MSE (mean of the two tasks)")
    fig.suptitle("final training loss of each init (the paper's Fig. 5, as box plots)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _draw_curves(path: Path, args: argparse.Namespace, runs: dict, ps: list[float]) -> None:
    fig, axes = plt.subplots(1, len(ps), figsize=(4.2 * len(ps), 4.4), sharey=True,
                             squeeze=False)
    for ax, p in zip(axes[0], ps, strict=True):
        for kind in args.models:
            curve = runs[(kind, p)]["curve"]  # (points, inits)
            steps = (np.arange(len(curve)) + 1) * (args.epochs * (args.train_rows
                                                                  // args.batch_size)) / len(curve)
            ax.plot(steps, np.median(curve, axis=1), color=COLORS[kind], label=LABELS[kind])
            ax.fill_between(steps, curve.min(axis=1), curve.max(axis=1), color=COLORS[kind],
                            alpha=0.15)
        ax.axhline(args.noise_std ** 2, color="gray", linestyle="--", linewidth=1)
        ax.set_yscale("log")
        ax.set_title(f"p = {p:.2f}")
        ax.set_xlabel("training step")
        ax.grid(alpha=0.3, which="both")
    axes[0][0].set_ylabel("mean batch loss (MSE, mean of tasks)")
    axes[0][-1].legend(fontsize=8)
    fig.suptitle("training curves: median over inits, min-max band")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
