"""The figures of part (b) (`quality_esmm.py`): judging pCVR, the printed tables and the PNGs.

Every figure is judged against the generator's truth of an unseen day: `truth` holds, aligned
with its rows, `p_click` and `p_cvr` (the true probabilities), `click` and `conversion` (the
logged labels) and `would_convert` (an outcome drawn from `p_cvr` for every impression, clicked
or not: whether it would have converted had it been clicked).
"""

from __future__ import annotations

import argparse
from dataclasses import astuple, dataclass
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # files only, no display

# isort: split
import matplotlib.pyplot as plt
import numpy as np
from scipy.stats import spearmanr
from sklearn.calibration import calibration_curve
from sklearn.metrics import roc_auc_score

LABELS = {"esmm": "ESMM", "clicked": "CVR tower on clicked rows",
          "base": "BASE (CVR-only, clicked)", "truth": "truth (generator's probabilities)"}
COLORS = {"esmm": "tab:blue", "clicked": "tab:red", "base": "tab:orange", "truth": "black"}
# The progressive-validation losses each variant trains on: its pick of the number of passes.
OBJECTIVE = {"esmm": ("click", "ctcvr"), "clicked": ("click", "conversion"),
             "base": ("conversion",)}
_NAN = float("nan")


@dataclass
class Judged:
    """A model's figures on the test day (NaN where the model has no such output)."""

    cvr_auc_all: float  # pCVR vs would_convert, every impression
    cvr_auc_clicked: float  # pCVR vs the logged conversion, clicked rows (the paper's CVR AUC)
    ctcvr_auc_all: float  # pCTCVR vs click x conversion, every impression
    spearman_all: float  # rank correlation of pCVR with p_cvr, every impression
    spearman_unclicked: float  # the same on the impressions without a click
    calib_all: float  # mean pCVR / mean p_cvr, every impression
    calib_clicked: float  # the same on clicked rows
    calib_unclicked: float  # the same on the impressions without a click
    xent_all: float  # expected log loss of pCVR under p_cvr, every impression (lower is better)
    ctr_auc: float  # pCTR vs click
    ctr_calib: float  # mean pCTR / mean p_click
    spearman_own_ctr: float  # rank correlation of pCVR with the same model's pCTR
    spearman_in_click_deciles: float  # with p_cvr within deciles of p_click, averaged


def judge(truth: dict[str, np.ndarray], p_ctr: np.ndarray | None, p_cvr: np.ndarray,
          p_ctcvr: np.ndarray | None) -> Judged:
    """The figures of one model's (or the truth's) scores of the test day."""
    click, p = truth["click"], truth["p_cvr"]
    q = np.clip(p_cvr, 1e-7, 1 - 1e-7)
    return Judged(
        roc_auc_score(truth["would_convert"], p_cvr),
        roc_auc_score(truth["conversion"][click], p_cvr[click]),
        _NAN if p_ctcvr is None else roc_auc_score(click & truth["conversion"], p_ctcvr),
        float(spearmanr(p_cvr, p).statistic),
        float(spearmanr(p_cvr[~click], p[~click]).statistic),
        p_cvr.mean() / p.mean(),
        p_cvr[click].mean() / p[click].mean(),
        p_cvr[~click].mean() / p[~click].mean(),
        float(-np.mean(p * np.log(q) + (1 - p) * np.log(1 - q))),
        _NAN if p_ctr is None else roc_auc_score(click, p_ctr),
        _NAN if p_ctr is None else p_ctr.mean() / truth["p_click"].mean(),
        _NAN if p_ctr is None else float(spearmanr(p_cvr, p_ctr).statistic),
        _within_click_deciles(truth, p_cvr),
    )


def _within_click_deciles(truth: dict[str, np.ndarray], p_cvr: np.ndarray) -> float:
    """Spearman of pCVR with p_cvr within each decile of p_click, averaged over the deciles.

    How well pCVR ranks what the click signal does not explain.
    """
    p_click = truth["p_click"]
    decile = np.searchsorted(np.quantile(p_click, np.linspace(0.1, 0.9, 9)), p_click)
    return float(np.mean([spearmanr(p_cvr[decile == k], truth["p_cvr"][decile == k]).statistic
                          for k in range(10)]))


def validation_loss(run: Any, name: str) -> float:
    """The summed log loss of `name`'s objective on the last progressive validation."""
    tasks = run.validation[-1][1]
    return float(sum(tasks[task]["logloss"] for task in OBJECTIVE[name]))


def choose_passes(runs: dict[tuple[str, int, int], Any], variants: list[str]) -> dict[str, int]:
    """Each variant's number of passes of least validation loss (mean over seeds)."""
    chosen = {}
    for name in variants:
        losses: dict[int, list[float]] = {}
        for (variant, passes, _), run in runs.items():
            if variant == name:
                losses.setdefault(passes, []).append(validation_loss(run, name))
        chosen[name] = min(losses, key=lambda passes: np.mean(losses[passes]))
    return chosen


def _cells(runs: list[Judged], fields: list[int], width: int) -> str:
    """One value per field, or mean±std over several runs (seeds); — where there is none."""
    values = np.array([astuple(j) for j in runs])[:, fields]
    if len(runs) == 1:
        return "".join(f"{'—' if np.isnan(v) else f'{v:.4f}':>{width}}" for v in values[0])
    return "".join(f"{'—' if np.isnan(m) else f'{m:.4f}±{s:.4f}':>{width}}"
                   for m, s in zip(values.mean(0), values.std(0), strict=True))


def _table(judged: dict[tuple[str, int], list[Judged]], columns: dict[str, int],
           chosen: dict[str, int]) -> None:
    width = 16 if max(len(runs) for runs in judged.values()) > 1 else 13
    header = f"    {'model, passes per day (* chosen)':<36}" + "".join(
        f"{c:>{width}}" for c in columns)
    print(header)
    print("    " + "-" * (len(header) - 4))
    for (name, passes), runs in judged.items():
        label = LABELS[name] if name == "truth" else (
            f"{LABELS[name]}, E={passes}{' *' if chosen.get(name) == passes else ''}")
        print(f"    {label:<36}" + _cells(runs, list(columns.values()), width))


def _pass_losses(curves: list[Any], key: str, passes: int) -> list[list[float]]:
    """The mean training loss of `key` over each pass, per day."""
    means = []
    for curve in curves:
        losses, ends = np.array(curve.losses[key]), np.array(curve.steps) - curve.first_step
        widths = np.diff(np.concatenate([[0], ends]))
        which = np.minimum((ends - 1) * passes // ends[-1], passes - 1)
        # A pass shorter than a call of the train function has no window of its own.
        means.append([float(np.average(losses[which == k], weights=widths[which == k]))
                      for k in range(passes) if np.any(which == k)])
    return means


def _print_data(args: argparse.Namespace, run: dict[str, Any]) -> None:
    truth = run["truth"]
    print(f"    logs: seed {args.log_seed}, task_correlation {args.task_correlation}, click_bias "
          f"{args.click_bias}; {len(run['days'])} training days and 1 unseen test day of "
          f"{args.rows_per_day} impressions each")
    for date, (n, clicks, conversions) in run["counts"].items():
        print(f"    {date}: {n} impressions, {clicks} clicks ({clicks / n:.2%}), {conversions} "
              f"conversions ({conversions / clicks:.1%} of clicks)")
    total = np.sum(list(run["counts"].values()), axis=0)
    print(f"    training days: {total[0]} impressions, {total[1]} clicks, {total[2]} conversions")
    click = truth["click"]
    print(f"    test day {run['test_day']}: {run['test_rows']} impressions, {int(click.sum())} "
          f"clicks, {int(truth['conversion'].sum())} conversions; would-convert outcomes drawn "
          f"for every impression (seed {args.outcome_seed}): {int(truth['would_convert'].sum())}")
    p = truth["p_cvr"]
    print(f"    true P(convert | click), mean: {p.mean():.4f} over every impression, "
          f"{p[click].mean():.4f} over clicked ones, {p[~click].mean():.4f} over the others")
    print("    rows preprocessed (Beam DirectRunner, written; every run of a variant shares "
          "them): " + ", ".join(f"{name} {n}" for name, n in run["written"].items()))
    print(f"    every model: MMoE 4 experts x [64, 32], towers [32], dropout {args.esmm_dropout}, "
          f"user/item id hash buckets {args.id_buckets}; batch {args.esmm_batch_size}, Adam "
          f"{args.esmm_learning_rate} (dense), Adagrad {args.esmm_embedding_learning_rate} "
          f"(tables); E passes per day, E in {args.epochs_per_day}; training seeds "
          f"{args.train_seeds}")
    print("    steps (all days): " + ", ".join(
        f"{name} E={passes}: {r.steps}" for (name, passes, seed), r in run["runs"].items()
        if seed == args.train_seeds[0]))


def _print_training(args: argparse.Namespace, run: dict[str, Any]) -> None:
    seed = args.train_seeds[0]
    print(f"    Training loss (seed {seed}), per day: mean over its first pass -> its last pass")
    for (name, passes, s), r in run["runs"].items():
        if s != seed:
            continue
        for key in r.curves[0].keys:
            days = _pass_losses(r.curves, key, passes)
            print(f"    {f'{name} E={passes} {key}':<30}" + " | ".join(
                f"{d[0]:.4f}" if passes == 1 else f"{d[0]:.4f}->{d[-1]:.4f}" for d in days))
    print(f"    Progressive validation (seed {seed}; each day scored before training on it): "
          "log loss / AUC of the objective's tasks; the last day's summed log loss picks E")
    for (name, passes, s), r in run["runs"].items():
        if s != seed:
            continue
        print(f"    {f'{name} E={passes}':<14}" + " | ".join(
            f"{date[5:]} " + " ".join(f"{task} {tasks[task]['logloss']:.4f}/"
                                      f"{tasks[task]['auc']:.3f}" for task in OBJECTIVE[name])
            for date, tasks in r.validation) + f" | sum {validation_loss(r, name):.4f}")


def print_report(args: argparse.Namespace, run: dict[str, Any]) -> None:
    """Prints the tables and the facts behind them (rows, seeds, steps, wall time)."""
    judged, chosen = run["judged"], run["chosen"]
    print()
    print("(b) ESMM on the entire space: ESMM against a pCVR tower trained on clicked rows only")
    _print_data(args, run)
    print()
    several = len(args.train_seeds) > 1
    print("    Judged on the unseen day" + (" (mean±std over seeds)" if several else "")
          + "; * = the passes per day of least validation loss (last training day)")
    _table(judged, {"pCVR AUC all": 0, "pCVR AUC clk": 1, "pCTCVR AUC": 2, "Spearman": 3,
                    "Spearman n-c": 4, "xent all": 8}, chosen)
    print("    pCVR AUC all: pCVR against the would-convert outcome of every impression;")
    print("    pCVR AUC clk: against the logged conversion on clicked rows (the paper's CVR AUC);")
    print("    pCTCVR AUC: against click x conversion on every row (the towers': pCTR x pCVR);")
    print("    Spearman: rank correlation of pCVR with the true P(convert | click) over every "
          "row; n-c: non-clicked rows;")
    print("    xent all: mean cross-entropy of pCVR under the true probability, every row "
          "(the truth's: its entropy)")
    ref = run["click_as_cvr"]
    print(f"    for reference, the true P(click) itself as a pCVR score: AUC all "
          f"{ref.cvr_auc_all:.4f}, AUC clk {ref.cvr_auc_clicked:.4f}, Spearman "
          f"{ref.spearman_all:.4f}, Spearman n-c {ref.spearman_unclicked:.4f}")
    print()
    print("    Calibration (mean pCVR / mean true probability) and the CTR side")
    _table(judged, {"pCVR cal all": 5, "pCVR cal clk": 6, "pCVR cal n-c": 7, "pCTR AUC": 9,
                    "pCTR cal": 10}, chosen)
    print("    pCTR cal: mean pCTR / mean true P(click)")
    print()
    print("    pCVR and the click signal (the truth's P(convert | click) and P(click) share an "
          "affinity: task_correlation)")
    _table(judged, {"Sp own pCTR": 11, "Sp in P(clk)": 12}, chosen)
    print("    Sp own pCTR: rank correlation of pCVR with the same model's pCTR (truth: of the "
          "two true probabilities);")
    print("    Sp in P(clk): rank correlation of pCVR with the true P(convert | click) within "
          "each decile of the true P(click), averaged")
    print()
    _print_training(args, run)
    if "esmm" in chosen and "clicked" in chosen:
        print()
        print("    ESMM minus the clicked-rows tower, pCVR AUC over every impression:")
        gaps = {}
        for passes in args.epochs_per_day:
            gaps[passes] = np.array([e.cvr_auc_all - c.cvr_auc_all for e, c in zip(
                judged[("esmm", passes)], judged[("clicked", passes)], strict=True)])
        print("    " + ", ".join(f"E={passes}: {g.mean():+.4f}" + (f"±{g.std():.4f}" if several
                                                                    else "")
                                 for passes, g in gaps.items()))
        best = (np.mean([j.cvr_auc_all for j in judged[("esmm", chosen["esmm"])]])
                - np.mean([j.cvr_auc_all for j in judged[("clicked", chosen["clicked"])]]))
        print(f"    each at its chosen passes (ESMM E={chosen['esmm']}, clicked E="
              f"{chosen['clicked']}): {best:+.4f}: ESMM's pCVR AUC over all impressions is "
              f"{'above' if best > 0 else 'not above'} the clicked-only tower's")
    print()
    print("    wall time: " + ", ".join(f"{k} {v:.0f} s" for k, v in run["timings"].items()))
    print("    figures: " + ", ".join(str(p) for p in run["pngs"]))


def _reliability(ax: Any, truth: dict[str, np.ndarray], scores: dict[str, tuple[str, Any]],
                 rows: np.ndarray, title: str) -> None:
    for name, (label, p_cvr) in {**scores, "truth": (LABELS["truth"], truth["p_cvr"])}.items():
        observed, predicted = calibration_curve(truth["would_convert"][rows], p_cvr[rows],
                                                n_bins=15, strategy="quantile")
        ax.plot(predicted, observed, "o-", ms=3, color=COLORS[name], label=label)
    ax.plot([0, 1], [0, 1], ":", color="grey", label="perfectly calibrated")
    top = float(np.quantile(np.concatenate([s[rows] for _, s in scores.values()]), 0.995))
    ax.set(xlim=(0, top), ylim=(0, top), title=title, xlabel="mean pCVR (15 quantile bins)",
           ylabel="rate of would-convert outcomes")
    ax.grid(alpha=0.3)


def _by_truth(ax: Any, truth: dict[str, np.ndarray], scores: dict[str, tuple[str, Any]]) -> None:
    p, click = truth["p_cvr"], truth["click"]
    edges = np.quantile(p, np.linspace(0, 1, 16))
    which = np.clip(np.searchsorted(edges, p, side="right") - 1, 0, 14)
    for name, (label, p_cvr) in scores.items():
        for rows, style, part in ((click, "o-", "clicked"), (~click, "s--", "not clicked")):
            keep = [k for k in range(15) if np.sum(rows & (which == k)) >= 30]
            x = [p[rows & (which == k)].mean() for k in keep]
            y = [p_cvr[rows & (which == k)].mean() for k in keep]
            ax.plot(x, y, style, ms=3, color=COLORS[name], label=f"{label}, {part}")
    top = 1.08 * max(max(line.get_xdata().max(), line.get_ydata().max()) for line in ax.lines)
    ax.plot([0, 1], [0, 1], ":", color="grey", label="pCVR = true probability")
    ax.set(xlim=(0, top), ylim=(0, top), xlabel="true P(convert | click) (15 quantile bins)",
           ylabel="mean pCVR in the bin",
           title="pCVR against the truth: clicked (solid) vs not clicked (dashed)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)


_PANELS = {"click_loss": "click log loss (every row)",
           "ctcvr_loss": "ESMM: pCTCVR log loss (every row)",
           "conversion_loss": "pCVR log loss (clicked rows)"}


def _losses(axes: Any, curves: dict[tuple[str, int], list[Any]], passes: list[int],
            days: list[str]) -> None:
    """One row of panels per number of passes: each term's training loss, smoothed."""
    for (name, e), per_day in curves.items():
        row = axes[passes.index(e)]
        for key in per_day[0].keys:
            x, y = [], []
            for d, curve in enumerate(per_day):
                ends = np.array(curve.steps) - curve.first_step
                x += list(d + ends / ends[-1])
                y += curve.losses[key]
            window = max(1, len(y) // (8 * len(days) * e))
            smooth = np.convolve(y, np.ones(window) / window, mode="valid")
            row[list(_PANELS).index(key)].plot(x[window - 1:], smooth, color=COLORS[name],
                                               label=name, lw=1)
    for e, row in zip(passes, axes, strict=True):
        for key, ax in zip(_PANELS, row, strict=True):
            for d in range(1, len(days)):
                ax.axvline(d, color="grey", lw=0.5)
            ax.set(title=f"{_PANELS[key]}, E={e} passes/day", ylabel="training loss",
                   xlabel="training day (its passes within it)")
            ax.grid(alpha=0.3)
            if ax.lines:
                ax.legend(fontsize=8)


def draw_figures(folder: Path, truth: dict[str, np.ndarray], scores: dict[str, tuple[str, Any]],
                 curves: dict[tuple[str, int], list[Any]], passes: list[int], days: list[str]
                 ) -> list[Path]:
    """Writes the PNGs: reliability, pCVR against the truth (selection bias), loss curves.

    Args:
        folder: Where the files go.
        truth: The test day's truth (see the module docstring).
        scores: `{variant: (label, pCVR of the test day)}`.
        curves: `{(variant, passes): [LossCurve per training day]}`.
        passes: The numbers of passes per day trained.
        days: The training days.

    Returns:
        The paths written.
    """
    folder.mkdir(parents=True, exist_ok=True)
    paths = [folder / "esmm_reliability.png", folder / "esmm_selection_bias.png",
             folder / "esmm_training_loss.png"]
    fig, axes = plt.subplots(1, 2, figsize=(12, 5.2))
    _reliability(axes[0], truth, scores, np.ones_like(truth["click"]),
                 "pCVR reliability, every impression")
    _reliability(axes[1], truth, scores, truth["click"], "pCVR reliability, clicked impressions")
    axes[0].legend(fontsize=8, loc="upper left")
    fig.tight_layout()
    fig.savefig(paths[0], dpi=110)
    plt.close(fig)

    fig, ax = plt.subplots(figsize=(7.5, 6.5))
    _by_truth(ax, truth, scores)
    fig.tight_layout()
    fig.savefig(paths[1], dpi=110)
    plt.close(fig)

    fig, axes = plt.subplots(len(passes), 3, figsize=(15, 3.6 * len(passes)), squeeze=False)
    _losses(axes, curves, passes, days)
    fig.tight_layout()
    fig.savefig(paths[2], dpi=110)
    plt.close(fig)
    return paths
