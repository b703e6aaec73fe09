"""A day's statistics for people: a text table, and one PNG of them (`multitower stats`).

Both read only the day's manifest (`multitower.manifest`), so they cost nothing next to the
Beam job that computed the statistics, and work on any day's manifest: sections a manifest
written by an older version lacks are left out, with a note.

The PNG is drawn with matplotlib's Agg canvas (no display, no global pyplot state): the label
correlation heat map, one histogram per numeric feature and regression label, the rejection
reasons, the length distribution of each list feature, positive rates, distinct counts.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

_WIDTH = 100  # characters of a table line, at most
_TOP_SHOWN = 10


def _number(x: float | None, digits: int = 4) -> str:
    if x is None:
        return "-"
    if isinstance(x, int) or float(x).is_integer() and abs(x) < 1e12:
        return f"{int(x):,}"
    return f"{x:.{digits}g}"


def _cut(text: str, width: int) -> str:
    return text if len(text) <= width else text[: width - 3] + "..."


def _rows(header: list[str], rows: list[list[str]], indent: int = 2) -> list[str]:
    """Columns padded to their widest cell: the first left-aligned, the others right-aligned."""
    table = [header, *rows]
    widths = [max(len(row[i]) for row in table) for i in range(len(header))]
    lines = []
    for row in table:
        cells = [row[0].ljust(widths[0])] + [c.rjust(w) for c, w in zip(row[1:], widths[1:],
                                                                       strict=True)]
        lines.append(_cut(" " * indent + "  ".join(cells).rstrip(), _WIDTH))
    return lines


def _section(title: str, lines: list[str]) -> list[str]:
    return ["", title, *lines]


def _missing_section(name: str) -> list[str]:
    return [f"  (not in this manifest: preprocess the day again to get {name})"]


def stats_table(manifest: dict[str, Any]) -> str:
    """The statistics of a day's manifest as text, one section per kind, for a terminal.

    Args:
        manifest: A day's manifest (`multitower.manifest.read_manifest`).

    Returns:
        Lines of at most 100 characters, without a final newline.
    """
    rows = manifest["rows"]
    out = [f"day {manifest['date']}  schema {manifest['schema_fingerprint']}  "
           f"preprocessed {manifest.get('created_at', '?')}",
           f"rows: read {rows['read']:,}, written {rows['written']:,}, rejected "
           f"{rows['rejected']:,}" + (f", skipped files {len(manifest['skipped_files'])}"
                                      if manifest.get("skipped_files") else "")]
    reasons = manifest.get("rejection_reasons") or {}
    out += _section("rejection reasons", _rows(["reason", "rows"], [
        [_cut(reason, 80), f"{n:,}"] for reason, n in sorted(reasons.items(),
                                                            key=lambda item: -item[1])])
        if reasons else ["  none"])
    out += _section("numeric features", _rows(
        ["feature", "count", "mean", "std", "min", "max"],
        [[name, _number(s["count"]), _number(s["mean"]), _number(s["std"]), _number(s["min"]),
          _number(s["max"])] for name, s in manifest["numeric"].items()]))
    out += _section("tasks", _tasks(manifest))
    out += _section("label correlation (Pearson, over rows having both labels)",
                    _correlation_lines(manifest))
    out += _section("categorical features (lists: over their elements)", _categorical(manifest))
    if manifest.get("lists"):
        out += _section("list features (lengths after cutting to max_length)", _lists(manifest))
    out += _section("missing values (kept: defaulted or unlabelled; rejected: the row's first "
                    "fault)", _missing(manifest))
    return "\n".join(out)


def _tasks(manifest: dict[str, Any]) -> list[str]:
    tasks = manifest.get("tasks")
    if tasks is None:  # an older manifest: the label means
        return _rows(["task", "rows", "mean"], [
            [name, _number(s["count"]), _number(s["mean"])]
            for name, s in manifest["labels"].items()])
    return _rows(["task", "type", "rows", "positive rate", "mean", "std"], [
        [name, s["type"], _number(s["count"]), _number(s.get("positive_rate")),
         _number(s.get("mean")), _number(s.get("std"))] for name, s in tasks.items()])


def correlation_matrix(manifest: dict[str, Any]) -> tuple[list[str], list[list[float | None]]]:
    """The task names and the symmetric matrix of their label correlations (1 on the diagonal)."""
    names = list(manifest.get("tasks") or manifest["labels"])
    index = {name: i for i, name in enumerate(names)}
    matrix: list[list[float | None]] = [[1.0 if i == j else None for j in range(len(names))]
                                        for i in range(len(names))]
    for pair in manifest.get("label_correlation", []):
        i, j = (index[name] for name in pair["tasks"])
        matrix[i][j] = matrix[j][i] = pair["pearson"]
    return names, matrix


def _correlation_lines(manifest: dict[str, Any]) -> list[str]:
    if "label_correlation" not in manifest:
        return _missing_section("label correlations")
    names, matrix = correlation_matrix(manifest)
    lines = _rows(["", *names], [[name, *("-" if r is None else f"{r:.3f}" for r in row)]
                                 for name, row in zip(names, matrix, strict=True)])
    rows = {pair["rows"] for pair in manifest["label_correlation"]}
    if len(rows) > 1:  # optional labels: pairs over different rows
        lines += ["  rows: " + ", ".join(f"{'/'.join(p['tasks'])} {p['rows']:,}"
                                          for p in manifest["label_correlation"])]
    return lines


def _categorical(manifest: dict[str, Any]) -> list[str]:
    features = manifest.get("categorical")
    if features is None:
        return _missing_section("distinct counts and top values")
    lines = _rows(["feature", "distinct", "top values (rows)"],
                  [[name, f"~{s['distinct']:,}", ""] for name, s in features.items()])
    tops = [""] + [", ".join(f"{value} ({count:,})" for value, count in s["top"][:_TOP_SHOWN])
                   for s in features.values()]
    return [_cut(line + ("  " + top if top else ""), _WIDTH)
            for line, top in zip(lines, tops, strict=True)]


def _lists(manifest: dict[str, Any]) -> list[str]:
    lines = _rows(["feature", "rows", "min", "mean", "max", "truncated"], [
        [name, _number(s["rows"]), _number(s["min"]), _number(s["mean"], 3), _number(s["max"]),
         _number(s["truncated"])] for name, s in manifest["lists"].items()])
    for name, s in manifest["lists"].items():
        shown = " ".join(f"{k}:{n}" for k, n in enumerate(s["lengths"]))
        lines.append(_cut(f"  {name} rows by length: {shown}", _WIDTH))
    return lines


def _missing(manifest: dict[str, Any]) -> list[str]:
    missing = manifest.get("missing")
    if missing is None:
        defaulted = manifest.get("defaulted") or {}
        return [f"  defaulted: {name} {n:,}" for name, n in defaulted.items() if n] or ["  none"]
    lacking = [[name, f"{s['kept']:,}", f"{s['rejected']:,}"] for name, s in missing.items()
               if s["kept"] or s["rejected"]]
    return _rows(["column", "kept", "rejected"], lacking) if lacking else ["  none"]


# --- the picture -------------------------------------------------------------------------


def _panels(manifest: dict[str, Any]) -> list[tuple[str, Callable[[Any], None]]]:
    """(title, draw(axes)) for each panel the manifest has data for, in reading order."""
    panels: list[tuple[str, Callable[[Any], None]]] = []
    if manifest.get("label_correlation"):
        panels.append(("label correlation (Pearson)", lambda ax: _heat_map(ax, manifest)))
    panels.append(("rejection reasons", lambda ax: _reasons(ax, manifest)))
    for name, buckets in (manifest.get("histograms") or {}).items():
        panels.append((name, lambda ax, b=buckets, n=name: _histogram(ax, n, b)))
    for name, s in (manifest.get("lists") or {}).items():
        panels.append((f"{name}: rows by list length",
                       lambda ax, s=s: _bars(ax, list(range(len(s["lengths"]))), s["lengths"],
                                             "elements (after cutting)")))
    rates = {name: s["positive_rate"] for name, s in (manifest.get("tasks") or {}).items()
             if s["type"] == "binary" and s["positive_rate"] is not None}
    if rates:
        panels.append(("positive rate per binary task",
                       lambda ax: _bars(ax, list(rates), list(rates.values()), "")))
    if manifest.get("categorical"):
        panels.append(("distinct values (approximate)", lambda ax: _distinct(ax, manifest)))
    return panels


def draw_png(manifest: dict[str, Any], path: str, columns: int = 3) -> None:
    """Draws the day's statistics as one PNG.

    Args:
        manifest: A day's manifest (`multitower.manifest.read_manifest`).
        path: The PNG file to write (any path matplotlib writes; replaced if it exists).
        columns: Panels per row.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    panels = _panels(manifest)
    rows = math.ceil(len(panels) / columns)
    figure = Figure(figsize=(5.2 * columns, 3.9 * rows + 0.6), dpi=100)
    FigureCanvasAgg(figure)
    figure.suptitle(f"multitower statistics of {manifest['date']}: "
                    f"{manifest['rows']['written']:,} rows written, "
                    f"{manifest['rows']['rejected']:,} rejected", fontsize=13)
    for k, (title, draw) in enumerate(panels):
        ax = figure.add_subplot(rows, columns, k + 1)
        ax.set_title(title, fontsize=10)
        draw(ax)
    figure.tight_layout(rect=(0, 0, 1, 0.97))
    figure.savefig(path, format="png")


def _heat_map(ax: Any, manifest: dict[str, Any]) -> None:
    names, matrix = correlation_matrix(manifest)
    values = [[math.nan if r is None else r for r in row] for row in matrix]
    image = ax.imshow(values, vmin=-1, vmax=1, cmap="RdBu_r")
    ax.set_xticks(range(len(names)), names, rotation=30, ha="right", fontsize=8)
    ax.set_yticks(range(len(names)), names, fontsize=8)
    for i, row in enumerate(values):
        for j, r in enumerate(row):
            ax.text(j, i, "-" if math.isnan(r) else f"{r:.2f}", ha="center", va="center",
                    fontsize=8, color="white" if abs(r) > 0.6 else "black")
    ax.figure.colorbar(image, ax=ax, fraction=0.046, pad=0.04)


def _reasons(ax: Any, manifest: dict[str, Any]) -> None:
    reasons = sorted((manifest.get("rejection_reasons") or {}).items(), key=lambda r: r[1])
    if not reasons:
        ax.text(0.5, 0.5, "no rejected rows", ha="center", va="center", transform=ax.transAxes)
        ax.set_axis_off()
        return
    reasons = reasons[-12:]
    ax.barh(range(len(reasons)), [n for _, n in reasons], height=0.6, color="#c0504d")
    pad = max(0.0, (4 - len(reasons)) / 2)  # a few reasons: bars of the usual thickness
    ax.set_ylim(-0.7 - pad, len(reasons) - 0.3 + pad)
    ax.set_yticks(range(len(reasons)), [_cut(r, 38) for r, _ in reasons], fontsize=7)
    ax.set_xlabel("rows")


def _histogram(ax: Any, name: str, buckets: list[list[float]]) -> None:
    zeros = sum(n for low, high, n in buckets if low == high == 0)
    total = sum(n for _, _, n in buckets)
    bars = [(low, high, n) for low, high, n in buckets if not low == high == 0]
    if not bars:
        ax.text(0.5, 0.5, f"{zeros:,} zeros" if zeros else "no values", ha="center",
                va="center", transform=ax.transAxes)
        return
    positive = all(low > 0 for low, _, _ in bars)
    logarithmic = positive and bars[-1][1] / bars[0][0] > 50
    # A density, so that buckets of different widths compare: per doubling on a log axis.
    heights = [n / math.log2(high / low) if logarithmic else n / (high - low)
               for low, high, n in bars]
    ax.bar([low for low, _, _ in bars], heights, width=[high - low for low, high, _ in bars],
           align="edge", color="#4f81bd", edgecolor="white", linewidth=0.3)
    if logarithmic:
        ax.set_xscale("log")
    ax.set_ylabel("rows per doubling" if logarithmic else "rows per unit", fontsize=8)
    if zeros:
        ax.set_title(f"{name} ({zeros / total:.0%} zeros, not drawn)", fontsize=10)


def _bars(ax: Any, labels: list, heights: list[float], xlabel: str) -> None:
    ax.bar(range(len(labels)), heights, color="#9bbb59")
    ax.set_xticks(range(len(labels)), [str(label) for label in labels],
                  fontsize=6 if len(labels) > 12 else 9)
    ax.set_xlabel(xlabel, fontsize=8)


def _distinct(ax: Any, manifest: dict[str, Any]) -> None:
    features = list(manifest["categorical"].items())
    ax.barh(range(len(features)), [max(1, s["distinct"]) for _, s in features], color="#8064a2")
    ax.set_yticks(range(len(features)), [name for name, _ in features], fontsize=8)
    ax.set_xscale("log")
    ax.set_xlabel("distinct values", fontsize=8)
