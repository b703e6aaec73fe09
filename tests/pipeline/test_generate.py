"""Tests of the synthetic impression generator: determinism, schema, and learnable signal."""

import csv
import datetime as dt
import gzip
import io
import json

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from multitower.config import load_config
from pipeline.generate import (
    LIST_DELIMITER,
    MAX_RECENT,
    Population,
    generate_day,
    generate_logs,
)
from pipeline.validate import LogLine, RowChecker
from tests.small_project import EXAMPLE

KEYS = {"event_id", "ts", "user_id", "user_segment", "user_country", "item_id", "item_category",
        "device", "hour", "position", "item_price", "user_activity", "click", "conversion",
        "watch_time", "like", "recent_items"}


@pytest.fixture(scope="module")
def population() -> Population:
    return Population(seed=3)


@pytest.fixture(scope="module")
def day(population: Population) -> list[dict]:
    rows, _ = generate_day(population, "2026-02-01", 20_000, seed=3, task_correlation=0.8)
    return rows


def _bytes(path: str) -> bytes:
    with open(path, "rb") as f:
        return f.read()


def _read(path: str) -> list[dict]:
    with gzip.open(path, "rt") as f:
        return [json.loads(line) for line in f]


def _auc(labels: np.ndarray, scores: np.ndarray) -> float:
    """Mann-Whitney AUC with tied scores sharing their average rank."""
    _, inverse, counts = np.unique(scores, return_inverse=True, return_counts=True)
    ranks = (np.cumsum(counts) - (counts - 1) / 2)[inverse]
    pos = labels.sum()
    neg = len(labels) - pos
    return float((ranks[labels == 1].sum() - pos * (pos + 1) / 2) / (pos * neg))


def test_same_seed_same_bytes_and_layout(tmp_path):
    a = generate_logs(str(tmp_path / "a"), "2026-01-30", 3, 300, seed=5, files_per_day=2)
    b = generate_logs(str(tmp_path / "b"), "2026-01-30", 3, 300, seed=5, files_per_day=2)
    c = generate_logs(str(tmp_path / "c"), "2026-01-30", 3, 300, seed=6, files_per_day=2)
    assert [p.split("/")[-2:] for p in a] == [
        [f"dt={d}", f"part-{k:05d}.jsonl.gz"]
        for d in ("2026-01-30", "2026-01-31", "2026-02-01") for k in range(2)]
    assert [_bytes(p) for p in a] == [_bytes(p) for p in b]
    assert all(_bytes(x) != _bytes(y) for x, y in zip(a, c, strict=True))
    assert sum(len(_read(p)) for p in a[:2]) == 300


def test_a_date_does_not_depend_on_the_start_date(tmp_path):
    from_30th = generate_logs(str(tmp_path / "a"), "2026-01-30", 2, 100, seed=1)
    from_31st = generate_logs(str(tmp_path / "b"), "2026-01-31", 1, 100, seed=1)
    assert _read(from_30th[2]) == _read(from_31st[0])


def test_columns_and_types(day):
    start = int(dt.datetime(2026, 2, 1, tzinfo=dt.UTC).timestamp())
    for row in day[:2000]:
        assert set(row) == KEYS
        for key in ("event_id", "user_id", "user_segment", "user_country", "item_id",
                    "item_category", "device"):
            assert isinstance(row[key], str), key
        assert row["device"] in {"ios", "android", "web", "tv"}
        assert 0 <= row["hour"] <= 23 and row["hour"] == (row["ts"] - start) // 3600
        assert 1 <= row["position"] <= 20 and isinstance(row["position"], int)
        assert isinstance(row["item_price"], float) and row["item_price"] > 0
        assert row["user_activity"] >= 0
        assert row["click"] in (0, 1) and row["conversion"] in (0, 1) and row["like"] in (0, 1)
        assert 1 <= len(row["recent_items"]) <= MAX_RECENT
        assert all(isinstance(item, str) for item in row["recent_items"])
        assert row["watch_time"] >= 0
    assert len({row["event_id"] for row in day}) == len(day)


def test_labels_are_consistent_and_rates_sane(day):
    click = np.array([r["click"] for r in day])
    conversion = np.array([r["conversion"] for r in day])
    watch = np.array([r["watch_time"] for r in day])
    assert np.all(conversion <= click)
    assert np.all(watch[click == 0] == 0) and np.all(watch[click == 1] > 0)
    assert 0.08 < click.mean() < 0.25
    assert 0.08 < conversion[click == 1].mean() < 0.4


def test_population_repeats_across_days(population, day):
    next_day, _ = generate_day(population, "2026-02-02", 20_000, seed=3, task_correlation=0.8)
    users = {r["user_id"] for r in day}
    repeat = np.mean([r["user_id"] in users for r in next_day])
    assert repeat > 0.3  # heavy users come back, as in real logs
    assert len({r["item_category"] for r in day}) > 150
    assert len({r["user_segment"] for r in day}) == 20


def _cell_ctr_vs_conversion(population: Population, task_correlation: float) -> float:
    """Correlation, over clicked rows, of the (segment, category) click rate with conversion."""
    rows, _ = generate_day(population, "2026-02-03", 40_000, 3, task_correlation)
    cell = np.unique([r["user_segment"] + r["item_category"] for r in rows], return_inverse=True)[1]
    click = np.array([r["click"] for r in rows])
    conversion = np.array([r["conversion"] for r in rows])
    ctr = np.bincount(cell, weights=click) / np.bincount(cell)
    clicked = click == 1
    return float(np.corrcoef(ctr[cell][clicked], conversion[clicked])[0, 1])


def test_task_correlation_shares_the_click_signal(population):
    shared = _cell_ctr_vs_conversion(population, 1.0)
    independent = _cell_ctr_vs_conversion(population, 0.0)
    assert shared > independent + 0.15
    assert abs(independent) < 0.1


def test_bad_task_correlation(population):
    with pytest.raises(ValueError, match="task_correlation"):
        generate_day(population, "2026-02-01", 10, seed=0, task_correlation=1.5)


def test_clicks_are_learnable_from_earlier_days(population):
    """The true logit ranks clicks well, and a segment x category table carries to the next day."""
    days = [generate_day(population, f"2026-03-0{d}", 60_000, 3, 0.8) for d in (1, 2, 3)]
    train = days[0][0] + days[1][0]
    test, truth = days[2]
    click = np.array([r["click"] for r in train])
    test_click = np.array([r["click"] for r in test])
    assert _auc(test_click, truth["click_logit"]) > 0.8

    keys, cell = np.unique([r["user_segment"] + r["item_category"] for r in train + test],
                           return_inverse=True)
    train_cell, test_cell = cell[: len(train)], cell[len(train):]
    clicks = np.bincount(train_cell, weights=click, minlength=len(keys))
    shown = np.bincount(train_cell, minlength=len(keys))
    prior = 20  # shrinks rarely seen cells towards the global rate
    table = (clicks + prior * click.mean()) / (shown + prior)
    assert _auc(test_click, table[test_cell]) > 0.72


def _click_like_correlation(population: Population, task_correlation: float) -> tuple:
    rows, _ = generate_day(population, "2026-02-04", 20_000, 3, task_correlation)
    click = np.array([r["click"] for r in rows])
    like = np.array([r["like"] for r in rows])
    return float(np.corrcoef(click, like)[0, 1]), click, like


def test_like_follows_click_by_task_correlation_without_being_gated(population):
    measured = {}
    for setting in (0.0, 0.3, 0.6, 0.9):
        measured[setting], click, like = _click_like_correlation(population, setting)
        assert 0.05 < like.mean() < 0.3, setting
        assert ((like == 1) & (click == 0)).sum() > 100, setting  # likes without a click
    assert abs(measured[0.0]) < 0.05
    assert measured[0.0] < measured[0.3] < measured[0.6] < measured[0.9]
    assert measured[0.9] > 0.6


def test_recent_items_are_item_ids_and_carry_click_signal(population, day):
    category_of = dict(zip(population.item_ids.tolist(),
                           population.category_names[population.item_category].tolist(),
                           strict=True))
    lengths = np.array([len(r["recent_items"]) for r in day])
    assert lengths.min() == 1 and lengths.max() == MAX_RECENT and 4 < lengths.mean() < 10
    assert all(item in category_of for r in day[:2000] for item in r["recent_items"])
    same = np.array([np.mean([category_of[item] == r["item_category"]
                              for item in r["recent_items"]]) for r in day])
    click = np.array([r["click"] for r in day])
    # A user's history holds more of the shown item's category when they click on it.
    assert same[click == 1].mean() > same[click == 0].mean() + 0.05
    assert _auc(click, same) > 0.55


def test_lists_in_csv_and_parquet(tmp_path):
    jsonl = generate_logs(str(tmp_path / "j"), "2026-01-30", 1, 200, seed=5, files_per_day=1)
    rows = _read(jsonl[0])
    assert all(isinstance(r["recent_items"], list) and r["recent_items"] for r in rows)
    [path] = generate_logs(str(tmp_path / "c"), "2026-01-30", 1, 200, seed=5, files_per_day=1,
                           log_format="csv")
    with gzip.open(path, "rt") as f:
        records = list(csv.DictReader(io.StringIO(f.read())))
    assert [r["recent_items"].split(LIST_DELIMITER) for r in records] == [
        r["recent_items"] for r in rows]
    assert [int(r["like"]) for r in records] == [r["like"] for r in rows]
    [path] = generate_logs(str(tmp_path / "p"), "2026-01-30", 1, 200, seed=5, files_per_day=1,
                           log_format="parquet")
    table = pq.read_table(path)
    assert table.schema.field("recent_items").type == pa.list_(pa.string())
    assert table.column("recent_items").to_pylist() == [r["recent_items"] for r in rows]
    assert table.column("like").to_pylist() == [r["like"] for r in rows]


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 1 / (1 + np.exp(-x))


def test_truth_columns_hold_the_probabilities_behind_the_labels(tmp_path):
    """The truth columns are the sigmoids of `generate_day`'s logits, exactly, in every format;
    without the option the files are byte for byte those of before."""
    plain = generate_logs(str(tmp_path / "plain"), "2026-01-30", 1, 400, seed=5,
                          files_per_day=1, click_bias=-1.5)
    again = generate_logs(str(tmp_path / "again"), "2026-01-30", 1, 400, seed=5,
                          files_per_day=1, click_bias=-1.5, truth_columns=False)
    assert _bytes(plain[0]) == _bytes(again[0])
    assert set(_read(plain[0])[0]) == KEYS
    expected, truth = generate_day(Population(5), "2026-01-30", 400, 5, 0.8, click_bias=-1.5)
    p_click = _sigmoid(truth["click_logit"]).tolist()
    p_conversion = _sigmoid(truth["conversion_logit"]).tolist()

    [jsonl] = generate_logs(str(tmp_path / "j"), "2026-01-30", 1, 400, seed=5, files_per_day=1,
                            click_bias=-1.5, truth_columns=True)
    rows = _read(jsonl)
    assert [r["true_p_click"] for r in rows] == p_click
    assert [r["true_p_conversion"] for r in rows] == p_conversion
    # The other columns are unchanged, and the truth is what the labels were drawn from: the
    # clicked rows' true click probability is well above the rest's.
    assert [{k: v for k, v in r.items() if k in KEYS} for r in rows] == _read(plain[0])
    click = np.array([r["click"] for r in rows], dtype=bool)
    assert np.mean(np.array(p_click)[click]) > 2 * np.mean(np.array(p_click)[~click])
    assert len(set(p_conversion)) > 300  # a probability per row, not a constant

    [path] = generate_logs(str(tmp_path / "c"), "2026-01-30", 1, 400, seed=5, files_per_day=1,
                           click_bias=-1.5, log_format="csv", truth_columns=True)
    with gzip.open(path, "rt") as f:
        records = list(csv.DictReader(io.StringIO(f.read())))
    assert [float(r["true_p_click"]) for r in records] == p_click
    assert [float(r["true_p_conversion"]) for r in records] == p_conversion
    [path] = generate_logs(str(tmp_path / "p"), "2026-01-30", 1, 400, seed=5, files_per_day=1,
                           click_bias=-1.5, log_format="parquet", truth_columns=True)
    table = pq.read_table(path)
    assert table.schema.field("true_p_conversion").type == pa.float64()
    assert table.column("true_p_click").to_pylist() == p_click
    assert table.column("true_p_conversion").to_pylist() == p_conversion
    assert len(expected) == len(rows)


def test_preprocessing_ignores_the_truth_columns(tmp_path):
    """A config that declares no truth column checks a row with them as the row without them."""
    checker = RowChecker(load_config(EXAMPLE).data)
    [plain] = generate_logs(str(tmp_path / "a"), "2026-01-30", 1, 50, seed=2, files_per_day=1)
    [truth] = generate_logs(str(tmp_path / "b"), "2026-01-30", 1, 50, seed=2, files_per_day=1,
                            truth_columns=True)
    with gzip.open(plain, "rb") as a, gzip.open(truth, "rb") as b:
        pairs = list(zip(a.read().splitlines(), b.read().splitlines(), strict=True))
    for n, (without, with_truth) in enumerate(pairs, 1):
        assert b"true_p_conversion" in with_truth
        checked = checker.check(LogLine("b", n, with_truth))
        assert checked.reason is None
        assert checked == checker.check(LogLine("a", n, without))
        assert not set(checked.row) & {"true_p_click", "true_p_conversion"}


def test_the_generate_command_writes_the_truth_columns_when_asked(tmp_path):
    from click.testing import CliRunner

    from commands.cli import main

    for flag, folder in (([], "plain"), (["--truth-columns"], "truth")):
        result = CliRunner().invoke(main, ["generate", "--out", str(tmp_path / folder),
                                           "--days", "1", "--rows-per-day", "40", *flag])
        assert result.exit_code == 0, result.output
    read = {}
    for folder in ("plain", "truth"):
        read[folder] = []
        for path in sorted((tmp_path / folder).glob("dt=*/*.jsonl.gz")):
            with gzip.open(path, "rt") as lines:
                read[folder] += [json.loads(line) for line in lines]
    assert len(read["truth"]) == len(read["plain"]) == 40
    for plain, truth in zip(read["plain"], read["truth"], strict=True):
        assert {k: truth[k] for k in plain} == plain
        assert set(truth) - set(plain) == {"true_p_click", "true_p_conversion"}
        assert 0.0 < truth["true_p_click"] < 1.0 and 0.0 < truth["true_p_conversion"] < 1.0
