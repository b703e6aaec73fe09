"""Deterministic synthetic impression logs with learnable, correlated multi-task labels.

A fixed population of users and items (drawn once from the seed) meets again every day, so a
model trained on earlier days generalizes to later ones. Each user has a latent vector around the
centre of its segment, each item one around the centre of its category; the click logit is their
dot product plus biases for position, hour, device, price and activity. Conversion (only after a
click) and watch time mix that click affinity with an independent second affinity, weighted by
`task_correlation`, which is what makes multi-task backbones such as MMoE worth comparing.
A `like` may come without a click: its logit mixes the click logit with an affinity of its own,
and its coin is the click's own with probability `task_correlation`, so the correlation of the
two labels rises from about 0 (`task_correlation` 0) to nearly 1 (1), nesting aside.
`recent_items` lists the user's recent items (1 to 20 ids, more for more active users), ids of
`item_id`: each is of the shown item's category with a probability that grows with the user's
affinity for that item, else any item by popularity, so the list carries click signal.

Files are gzipped JSON lines, `<out_dir>/dt=YYYY-MM-DD/part-NNNNN.jsonl.gz`, or the same rows as
gzipped CSV with a header row (`part-NNNNN.csv.gz`) or Parquet (`part-NNNNN.parquet`), byte-
identical for the same arguments: every random draw comes from a generator seeded by (seed,
date), the gzip header carries no timestamp or file name, and the Parquet writer's options are
fixed. With a missing rate, each of the `MISSABLE` context features is missing from a row with
that probability (drawn from a generator of its own, so the rest of the day does not change): a
key left out of the JSON object, an empty CSV cell, a Parquet null. `like` and `recent_items`
(the last two columns, but for the truth columns) are drawn from generators of their own too, so
every other column holds what it held before they existed. A list is a JSON array, a CSV cell
of its elements joined by `|` (`LIST_DELIMITER`, the default `data.csv.list_delimiter`; a list
is never empty, so an empty cell still means missing), a Parquet `list<string>` column.

With `truth_columns`, each row also holds the probabilities its labels were drawn from
(`TRUTH_COLUMNS`): `true_p_click` and `true_p_conversion` (given a click, defined for every
impression), the sigmoids of `generate_day`'s logits, as float64 written in full (they round-trip
exactly through JSON, CSV and Parquet). A config that declares no such column ignores them, so
a benchmark can read the ground truth of a model's scores from the very rows it preprocessed.
"""

from __future__ import annotations

import csv
import datetime as dt
import gzip
import io
import json
import math
import posixpath

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import tensorflow as tf

NUM_USERS = 200_000
NUM_ITEMS = 150_000
NUM_SEGMENTS = 20
NUM_CATEGORIES = 200
LATENT_DIM = 4
COUNTRIES = ("US", "IN", "BR", "ID", "MX", "DE", "GB", "FR", "JP", "TR", "PH", "VN", "IT", "ES",
             "KR", "CA", "PL", "AR", "CO", "EG", "NG", "TH", "SA", "AU", "NL", "UA", "PK", "ZA",
             "SE", "CL")
DEVICES = ("ios", "android", "web", "tv")
LOG_FORMATS = ("jsonl", "csv", "parquet")
MISSABLE = ("user_country", "device", "user_activity")  # the features a row may lack
LIST_DELIMITER = "|"  # between the elements of a list in a CSV cell
MAX_RECENT = 20  # the most items a `recent_items` list holds
# Columns `truth_columns` adds (the last two): the probabilities the labels were drawn from.
TRUTH_COLUMNS = ("true_p_click", "true_p_conversion")
_DEVICE_SHARE = np.array([0.35, 0.40, 0.20, 0.05])
_DEVICE_EFFECT = np.array([0.15, 0.0, -0.2, -0.4])
_MAX_POSITION = 20

# Spread of a latent vector around its cluster centre; the centre carries most of the signal so
# that hashed segment/category embeddings alone explain most of it and id embeddings refine it.
_MEMBER_NOISE = 0.4
# Standard deviation of a dot product of two latents (each coordinate ~ N(0, 1 + noise^2)).
_AFFINITY_STD = (1 + _MEMBER_NOISE**2) * math.sqrt(LATENT_DIM)


def _zipf_cdf(size: int, exponent: float, offset: float) -> np.ndarray:
    weights = 1.0 / (np.arange(size) + offset) ** exponent
    return np.cumsum(weights) / weights.sum()


class Population:
    """Users and items with their latent factors: a pure function of the seed.

    Args:
        seed: Seeds every draw; the same seed gives the same users and items.
    """

    def __init__(self, seed: int) -> None:
        rng = np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(0,)))
        # Two independent affinities: `click_*` drives clicks, `post_*` the post-click tasks.
        seg_click = rng.normal(size=(NUM_SEGMENTS, LATENT_DIM))
        seg_post = rng.normal(size=(NUM_SEGMENTS, LATENT_DIM))
        cat_click = rng.normal(size=(NUM_CATEGORIES, LATENT_DIM))
        cat_post = rng.normal(size=(NUM_CATEGORIES, LATENT_DIM))

        seg_share = rng.dirichlet(np.full(NUM_SEGMENTS, 3.0))
        self.user_segment = rng.choice(NUM_SEGMENTS, size=NUM_USERS, p=seg_share)
        country_cdf = _zipf_cdf(len(COUNTRIES), 1.1, 1.0)
        self.user_country = np.searchsorted(country_cdf, rng.random(NUM_USERS))
        self.user_click = seg_click[self.user_segment] + _MEMBER_NOISE * rng.normal(
            size=(NUM_USERS, LATENT_DIM))
        self.user_post = seg_post[self.user_segment] + _MEMBER_NOISE * rng.normal(
            size=(NUM_USERS, LATENT_DIM))
        seg_bias = 0.5 * rng.normal(size=NUM_SEGMENTS)
        self.user_bias = seg_bias[self.user_segment] + 0.3 * rng.normal(size=NUM_USERS)
        self.user_device = rng.choice(len(DEVICES), size=NUM_USERS, p=_DEVICE_SHARE)
        self.user_activity = rng.lognormal(1.5, 0.8, size=NUM_USERS)
        # Ids are shuffled so that popularity does not show in the id's digits.
        self.user_ids = np.array([f"u{i}" for i in rng.permutation(NUM_USERS) + 100_000])
        self.user_cdf = _zipf_cdf(NUM_USERS, 0.9, 20.0)

        cat_cdf = _zipf_cdf(NUM_CATEGORIES, 0.8, 5.0)
        self.item_category = np.searchsorted(cat_cdf, rng.random(NUM_ITEMS))
        self.item_click = cat_click[self.item_category] + _MEMBER_NOISE * rng.normal(
            size=(NUM_ITEMS, LATENT_DIM))
        self.item_post = cat_post[self.item_category] + _MEMBER_NOISE * rng.normal(
            size=(NUM_ITEMS, LATENT_DIM))
        cat_bias = 0.7 * rng.normal(size=NUM_CATEGORIES)
        self.item_bias = cat_bias[self.item_category] + 0.3 * rng.normal(size=NUM_ITEMS)
        cat_price = rng.normal(3.0, 0.8, size=NUM_CATEGORIES)
        self.item_log_price = cat_price[self.item_category] + 0.4 * rng.normal(size=NUM_ITEMS)
        self.item_ids = np.array([f"i{i}" for i in rng.permutation(NUM_ITEMS) + 100_000])
        self.item_cdf = _zipf_cdf(NUM_ITEMS, 0.8, 50.0)

        self.segment_names = np.array([f"seg{k:02d}" for k in range(NUM_SEGMENTS)])
        self.category_names = np.array([f"cat{k:03d}" for k in range(NUM_CATEGORIES)])

        # Drawn after everything above, from a stream of its own: the draws above stay those
        # made before `like` existed.
        extra = np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(3,)))
        self.user_like = _MEMBER_NOISE * extra.normal(size=(NUM_USERS, LATENT_DIM))
        self.item_like = extra.normal(size=(NUM_CATEGORIES, LATENT_DIM))[self.item_category] + (
            _MEMBER_NOISE * extra.normal(size=(NUM_ITEMS, LATENT_DIM)))
        self.user_like += extra.normal(size=(NUM_SEGMENTS, LATENT_DIM))[self.user_segment]
        # The items of each category, contiguous: category c's are items_by_category[
        # category_start[c]:category_start[c + 1]].
        self.items_by_category = np.argsort(self.item_category, kind="stable")
        self.category_start = np.searchsorted(self.item_category[self.items_by_category],
                                              np.arange(NUM_CATEGORIES + 1))


_POSITION_CDF = _zipf_cdf(_MAX_POSITION, 0.7, 1.0)  # top slots are shown (and logged) more


def _hour_effect(hour: np.ndarray) -> np.ndarray:
    return 0.3 * np.cos(2 * np.pi * (hour - 21) / 24)  # evening sessions click more


def generate_day(
    population: Population, date: str, rows: int, seed: int, task_correlation: float,
    click_bias: float = 0.0, missing_rate: float = 0.0,
) -> tuple[list[dict], dict[str, np.ndarray]]:
    """Draws one day's impressions.

    Args:
        population: The users and items that meet.
        date: `YYYY-MM-DD`; with `seed` it fixes every draw of the day.
        rows: Number of impressions.
        seed: The generator's seed.
        task_correlation: 1.0 gives post-click tasks the click affinity, 0.0 an independent one;
            and `like` follows click by as much (see the module docstring).
        click_bias: added to every click logit; negative values give a low click rate (-1.5
            gives about 5.5%, -2.0 about 4%), as in ad logs where ESMM matters most.
        missing_rate: The probability, in [0, 1], that a row lacks each `MISSABLE` feature
            (its value is then None); the other values do not depend on it.

    Returns:
        The rows, sorted by timestamp, and the ground truth behind their labels as arrays aligned
        with the rows: `click_logit`, `conversion_logit` (given a click), `watch_log_mean`
        (the mean of log watch time, given a click) and `like_logit`. Tests and benchmarks use
        it as the ceiling a model can reach.
    """
    if not 0.0 <= task_correlation <= 1.0:
        raise ValueError(f"task_correlation must be in [0, 1], got {task_correlation}")
    if not 0.0 <= missing_rate <= 1.0:
        raise ValueError(f"missing_rate must be in [0, 1], got {missing_rate}")
    day = dt.date.fromisoformat(date)
    rng = np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(1, day.toordinal())))
    pop = population

    users = np.searchsorted(pop.user_cdf, rng.random(rows))
    items = np.searchsorted(pop.item_cdf, rng.random(rows))
    start = int(dt.datetime(day.year, day.month, day.day, tzinfo=dt.UTC).timestamp())
    ts = np.sort(start + rng.integers(0, 86_400, size=rows))
    hour = (ts - start) // 3600
    position = 1 + np.searchsorted(_POSITION_CDF, rng.random(rows))
    own_device = rng.random(rows) < 0.8
    device = np.where(own_device, pop.user_device[users],
                      rng.choice(len(DEVICES), size=rows, p=_DEVICE_SHARE))
    log_price = pop.item_log_price[items]
    activity = pop.user_activity[users] * rng.lognormal(0.0, 0.25, size=rows)

    click_aff = np.einsum("nd,nd->n", pop.user_click[users], pop.item_click[items]) / _AFFINITY_STD
    post_aff = np.einsum("nd,nd->n", pop.user_post[users], pop.item_post[items]) / _AFFINITY_STD
    mixed = task_correlation * click_aff + math.sqrt(1 - task_correlation**2) * post_aff

    # Strengths are tuned for a ~14% click rate, a true-logit AUC near 0.9 and a segment x category
    # table (fitted on two days of 60k rows) near 0.8 on the third day: learnable, not trivial.
    click_logit = (-2.4 + click_bias + 2.0 * click_aff + pop.user_bias[users] + pop.item_bias[items]
                   - 0.15 * (position - 1) + _hour_effect(hour) + _DEVICE_EFFECT[device]
                   - 0.25 * (log_price - 3.0) + 0.2 * np.log1p(activity))
    conversion_logit = -2.2 + 1.2 * mixed - 0.35 * (log_price - 3.0)
    watch_log_mean = 3.5 + 0.6 * mixed

    click_coin = rng.random(rows)
    click = click_coin < 1 / (1 + np.exp(-click_logit))
    conversion = click & (rng.random(rows) < 1 / (1 + np.exp(-conversion_logit)))
    watch = np.where(click, np.exp(watch_log_mean + 0.8 * rng.normal(size=rows)), 0.0)

    stamp = day.strftime("%Y%m%d")
    columns = {
        "event_id": [f"e{stamp}-{i:07d}" for i in range(rows)],
        "ts": ts.tolist(),
        "user_id": pop.user_ids[users].tolist(),
        "user_segment": pop.segment_names[pop.user_segment[users]].tolist(),
        "user_country": np.array(COUNTRIES)[pop.user_country[users]].tolist(),
        "item_id": pop.item_ids[items].tolist(),
        "item_category": pop.category_names[pop.item_category[items]].tolist(),
        "device": np.array(DEVICES)[device].tolist(),
        "hour": hour.tolist(),
        "position": position.tolist(),
        "item_price": np.round(np.exp(log_price), 2).tolist(),
        "user_activity": np.round(activity, 2).tolist(),
        "click": click.astype(int).tolist(),
        "conversion": conversion.astype(int).tolist(),
        "watch_time": np.round(watch, 1).tolist(),
    }
    columns["like"], columns["recent_items"], like_logit = _likes_and_history(
        pop, users, items, click_logit, click_aff, click_coin, task_correlation,
        np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(4, day.toordinal()))))
    if missing_rate > 0:
        # A generator of its own: the day's other draws stay those of every missing rate.
        holes = np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(2, day.toordinal())))
        missing = holes.random((len(MISSABLE), rows)) < missing_rate
        for name, lacks in zip(MISSABLE, missing, strict=True):
            columns[name] = [None if gone else value
                             for value, gone in zip(columns[name], lacks.tolist(), strict=True)]
    names = list(columns)
    table = [dict(zip(names, values, strict=True))
             for values in zip(*columns.values(), strict=True)]
    truth = {"click_logit": click_logit, "conversion_logit": conversion_logit,
             "watch_log_mean": watch_log_mean, "like_logit": like_logit}
    return table, truth


def _likes_and_history(
    pop: Population, users: np.ndarray, items: np.ndarray, click_logit: np.ndarray,
    click_aff: np.ndarray, click_coin: np.ndarray, task_correlation: float,
    rng: np.random.Generator,
) -> tuple[list[int], list[list[str]], np.ndarray]:
    """The `like` labels, the `recent_items` lists and the like logits of a day's rows.

    Args:
        pop: The population.
        users: Each row's user (index).
        items: Each row's item (index).
        click_logit: Each row's click logit.
        click_aff: Each row's user-item click affinity (about unit variance).
        click_coin: The uniform draw each row's click was decided by.
        task_correlation: How much `like` follows click, in [0, 1].
        rng: The generator of these columns alone.

    Returns:
        `(like, recent_items, like_logit)`.
    """
    rows = len(users)
    like_aff = np.einsum("nd,nd->n", pop.user_like[users], pop.item_like[items]) / _AFFINITY_STD
    rho = task_correlation
    like_logit = -2.7 + rho * (click_logit + 2.4) + math.sqrt(1 - rho**2) * 2.0 * like_aff
    # The click's own coin with probability rho: likes and clicks of a row then rise together.
    coin = np.where(rng.random(rows) < rho, click_coin, rng.random(rows))
    like = coin < 1 / (1 + np.exp(-like_logit))

    lengths = np.minimum(MAX_RECENT, 1 + rng.poisson(pop.user_activity[users]))
    owner = np.repeat(np.arange(rows), lengths)
    # A user's history holds more of the shown item's category the more they like such items.
    same = rng.random(owner.size) < 0.8 / (1 + np.exp(1.0 - 2.0 * click_aff[owner]))
    category = pop.item_category[items[owner]]
    start = pop.category_start[category]
    size = pop.category_start[category + 1] - start
    in_category = pop.items_by_category[start + (rng.random(owner.size) * size).astype(int)]
    popular = np.minimum(np.searchsorted(pop.item_cdf, rng.random(owner.size)), NUM_ITEMS - 1)
    ids = pop.item_ids[np.where(same, in_category, popular)].tolist()
    ends = np.cumsum(lengths).tolist()
    recent = [ids[start:end] for start, end in zip([0, *ends[:-1]], ends, strict=True)]
    return like.astype(int).tolist(), recent, like_logit


# Parquet column types of the generated rows; float features and watch time as float64, so the
# values are those the JSON and CSV files hold, digit for digit.
_PARQUET_SCHEMA = pa.schema(
    [(name, pa.string()) for name in ("event_id", "user_id", "user_segment", "user_country",
                                      "item_id", "item_category", "device")]
    + [(name, pa.int64()) for name in ("ts", "hour", "position", "click", "conversion", "like")]
    + [(name, pa.float64()) for name in ("item_price", "user_activity", "watch_time")]
    + [("recent_items", pa.list_(pa.string()))]
    + [(name, pa.float64()) for name in TRUTH_COLUMNS])


def _jsonl_bytes(rows: list[dict]) -> bytes:
    lines = [json.dumps({k: v for k, v in row.items() if v is not None}, separators=(",", ":"))
             for row in rows]
    return gzip.compress(("\n".join(lines) + "\n").encode() if lines else b"", compresslevel=6,
                         mtime=0)


def _csv_bytes(rows: list[dict], names: list[str]) -> bytes:
    text = io.StringIO()
    writer = csv.writer(text, lineterminator="\n")
    writer.writerow(names)
    # A float's str() is its shortest round-trip form, as in JSON; None is an empty cell.
    writer.writerows([["" if row[n] is None else LIST_DELIMITER.join(row[n])
                       if isinstance(row[n], list) else row[n] for n in names] for row in rows])
    return gzip.compress(text.getvalue().encode(), compresslevel=6, mtime=0)


def _parquet_bytes(rows: list[dict], names: list[str]) -> bytes:
    schema = pa.schema([_PARQUET_SCHEMA.field(n) for n in names])
    table = pa.Table.from_pydict({n: [row[n] for row in rows] for n in names}, schema=schema)
    out = io.BytesIO()
    pq.write_table(table, out, compression="snappy", row_group_size=50_000)
    return out.getvalue()


def write_rows(path: str, rows: list[dict], log_format: str, names: list[str]) -> None:
    """Writes generated rows as one log file in `log_format` (see the module docstring).

    Args:
        path: The file to write, replaced if it exists.
        rows: Rows of `generate_day` (None: a missing value).
        log_format: `jsonl`, `csv` or `parquet`.
        names: The columns, in the order a CSV header or a Parquet schema lists them.
    """
    if log_format == "jsonl":
        payload = _jsonl_bytes(rows)
    elif log_format == "csv":
        payload = _csv_bytes(rows, names)
    else:
        payload = _parquet_bytes(rows, names)
    with tf.io.gfile.GFile(path, "wb") as f:
        f.write(payload)


_SUFFIXES = {"jsonl": ".jsonl.gz", "csv": ".csv.gz", "parquet": ".parquet"}


def _with_truth(table: list[dict], truth: dict[str, np.ndarray]) -> list[dict]:
    """The rows with `TRUTH_COLUMNS` appended: the sigmoids of the click and conversion logits."""
    p_click = (1 / (1 + np.exp(-truth["click_logit"]))).tolist()
    p_conversion = (1 / (1 + np.exp(-truth["conversion_logit"]))).tolist()
    return [{**row, TRUTH_COLUMNS[0]: click, TRUTH_COLUMNS[1]: conversion}
            for row, click, conversion in zip(table, p_click, p_conversion, strict=True)]


def generate_logs(
    out_dir: str,
    start_date: str,
    days: int,
    rows_per_day: int,
    seed: int = 0,
    task_correlation: float = 0.8,
    files_per_day: int = 2,
    click_bias: float = 0.0,
    log_format: str = "jsonl",
    missing_rate: float = 0.0,
    truth_columns: bool = False,
) -> list[str]:
    """Writes `days` days of impression logs starting at `start_date`.

    Args:
        out_dir: Root directory (local or any `tf.io.gfile` filesystem); each day goes to
            `<out_dir>/dt=YYYY-MM-DD/part-NNNNN.jsonl.gz` (`.csv.gz`, `.parquet`), replacing
            files of the same name.
        start_date: First day, `YYYY-MM-DD`.
        days: Number of consecutive days.
        rows_per_day: Impressions per day, split evenly over the day's files.
        seed: Fixes the population and every day's draws; a given date's file bytes depend only
            on (seed, date, rows_per_day, task_correlation, files_per_day, click_bias, format,
            missing_rate, truth_columns).
        task_correlation: How much conversion and watch time share the click signal, and how
            closely `like` follows click, in [0, 1].
        files_per_day: Number of files per day.
        click_bias: Added to every click logit (negative: a lower click rate).
        log_format: `jsonl`, `csv` or `parquet`: the same rows in each.
        missing_rate: The probability that a row lacks each `MISSABLE` feature, in [0, 1].
        truth_columns: Also write `TRUTH_COLUMNS`, the true click and conversion probabilities
            of each row (see the module docstring); the other columns do not change.

    Returns:
        The written file paths, in date then part order.
    """
    if days < 1 or rows_per_day < 1 or files_per_day < 1:
        raise ValueError(f"days, rows_per_day and files_per_day must be >= 1, got "
                         f"{days}, {rows_per_day}, {files_per_day}")
    if log_format not in LOG_FORMATS:
        raise ValueError(f"log_format must be one of {LOG_FORMATS}, got {log_format!r}")
    first = dt.date.fromisoformat(start_date)
    population = Population(seed)
    paths = []
    for offset in range(days):
        date = (first + dt.timedelta(days=offset)).isoformat()
        table, truth = generate_day(population, date, rows_per_day, seed, task_correlation,
                                    click_bias, missing_rate)
        if truth_columns:
            table = _with_truth(table, truth)
        names = list(table[0])
        day_dir = posixpath.join(out_dir, f"dt={date}")
        tf.io.gfile.makedirs(day_dir)
        bounds = np.linspace(0, rows_per_day, files_per_day + 1).astype(int)
        for part in range(files_per_day):
            path = posixpath.join(day_dir, f"part-{part:05d}{_SUFFIXES[log_format]}")
            write_rows(path, table[bounds[part]:bounds[part + 1]], log_format, names)
            paths.append(path)
    return paths
