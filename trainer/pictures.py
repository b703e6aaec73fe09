"""Pictures of an evaluation report (`multitower evaluate --png DIR`).

- `calibration.png`: per binary task (and ESMM's pCTCVR), the reliability diagram: each
  calibration bin's mean prediction against its positive rate, the diagonal for a calibrated
  model, and the rows per bin beneath.
- `gates.png` (gated backbones only): per gate level, a heat map of the mean weight each gate
  gives each expert; a blank cell is an expert the gate does not see (CGC, PLE).

Drawn with matplotlib's Agg canvas (no display, no global pyplot state), from the report alone:
the pictures show exactly the report's numbers.
"""

from __future__ import annotations

import math
import os
from typing import Any

import numpy as np


def _figure(panels: int, width: float, height: float) -> tuple[Any, list[Any]]:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    columns = min(panels, 3)
    rows = math.ceil(panels / columns)
    figure = Figure(figsize=(width * columns, height * rows + 0.6), dpi=100)
    FigureCanvasAgg(figure)
    return figure, [figure.add_subplot(rows, columns, k + 1) for k in range(panels)]


def _title(report: dict) -> str:
    return (f"{os.path.basename(report['checkpoint'])} on {report['date']} "
            f"({report['rows']:,} rows)")


def draw_calibration(report: dict, path: str) -> Any:
    """Draws every binary output's reliability diagram into `path`; returns the figure.

    Returns None (and writes nothing) when the report has no binary output.
    """
    curves = {task: values["calibration_curve"] for task, values in report["tasks"].items()
              if "calibration_curve" in values}
    if not curves:
        return None
    figure, axes = _figure(len(curves), 4.6, 4.6)
    figure.suptitle(f"calibration of {_title(report)}", fontsize=12)
    for ax, (task, bins) in zip(axes, curves.items(), strict=True):
        predicted = [b["mean_prediction"] for b in bins]
        observed = [b["positive_rate"] for b in bins]
        top = max([0.05, *predicted, *observed]) * 1.05
        top = min(1.0, top)
        ax.plot([0, top], [0, top], color="#999999", linestyle="--", linewidth=1,
                label="calibrated")
        ax.plot(predicted, observed, marker="o", color="#1f77b4", label=task)
        ax.set_xlim(0, top)
        ax.set_ylim(0, top)
        ax.set_xlabel("mean prediction in the bin")
        ax.set_ylabel("positive rate in the bin")
        ax.set_title(f"{task}: calibration {report['tasks'][task]['calibration']:.3f}",
                     fontsize=10)
        ax.legend(loc="upper left", fontsize=8)
        rows = ax.twinx()  # the rows behind each point, as faint bars on a log scale
        rows.bar([(b["low"] + b["high"]) / 2 for b in bins], [b["rows"] for b in bins],
                 width=[(b["high"] - b["low"]) * 0.9 for b in bins], color="#1f77b4",
                 alpha=0.12, log=True)
        rows.set_ylim(0.8, max(b["rows"] for b in bins) * 30)  # bars in the lower part
        rows.set_ylabel("rows (log)", fontsize=8)
        rows.tick_params(labelsize=7)
    figure.tight_layout(rect=(0, 0, 1, 0.95))
    figure.savefig(path, format="png")
    return figure


def gate_matrices(gates: dict[str, dict]) -> list[tuple[str, list[str], list[str], np.ndarray]]:
    """The report's gates as heat maps: `(level, gate names, expert names, weights)` per level.

    A gate named `level<k>/<task>` belongs to level k (PLE); any other name to one level. A
    weight is NaN where the gate does not see the expert.
    """
    levels: dict[str, list[str]] = {}
    for name in gates:
        level, _, _ = name.rpartition("/")
        levels.setdefault(level, []).append(name)
    found = []
    for level, names in levels.items():
        experts: list[str] = []
        for name in names:
            experts += [e for e in gates[name]["experts"] if e not in experts]
        # Columns by group (tasks' experts in the order met, shared ones last), then by number.
        groups = list(dict.fromkeys(e.rpartition("/")[0] for e in experts))
        experts.sort(key=lambda e: (e.rpartition("/")[0] == "shared",
                                    groups.index(e.rpartition("/")[0]),
                                    int(e.rpartition("/")[2].lstrip("e") or 0)))
        matrix = np.full((len(names), len(experts)), np.nan)
        for i, name in enumerate(names):
            for expert, weight in zip(gates[name]["experts"],
                                      gates[name]["mean_weight_per_expert"], strict=True):
                matrix[i, experts.index(expert)] = weight
        found.append((level, [n.rpartition("/")[2] for n in names], experts, matrix))
    return found


def draw_gates(report: dict, path: str) -> Any:
    """Draws the mean gate weights as heat maps into `path`; returns the figure.

    Returns None (and writes nothing) when the backbone has no gates.
    """
    matrices = gate_matrices(report["gates"])
    if not matrices:
        return None
    widest = max(len(experts) for _, _, experts, _ in matrices)
    figure, axes = _figure(len(matrices), 1.0 + 0.75 * widest, 1.6 + 0.5 * max(
        len(gates) for _, gates, _, _ in matrices))
    figure.suptitle(f"mean gate weight per expert, {_title(report)}", fontsize=12)
    for ax, (level, gates, experts, matrix) in zip(axes, matrices, strict=True):
        image = ax.imshow(np.ma.masked_invalid(matrix), vmin=0.0, vmax=1.0, cmap="viridis",
                          aspect="auto")
        ax.set_xticks(range(len(experts)), experts, rotation=40, ha="right", fontsize=8)
        ax.set_yticks(range(len(gates)), [f"gate {g}" for g in gates], fontsize=8)
        for i, row in enumerate(matrix):
            for j, weight in enumerate(row):
                if not np.isnan(weight):
                    ax.text(j, i, f"{weight:.2f}", ha="center", va="center", fontsize=7,
                            color="black" if weight > 0.6 else "white")
        ax.set_title(level or "gates", fontsize=10)
        figure.colorbar(image, ax=ax, fraction=0.046, pad=0.04)
    figure.tight_layout(rect=(0, 0, 1, 0.93))
    figure.savefig(path, format="png")
    return figure


def draw_report(report: dict, folder: str) -> list[str]:
    """Draws the report's pictures into `folder` (made if missing); returns the files written."""
    os.makedirs(folder, exist_ok=True)
    written = []
    for name, draw in (("calibration.png", draw_calibration), ("gates.png", draw_gates)):
        path = os.path.join(folder, name)
        if draw(report, path) is not None:
            written.append(path)
    return written
