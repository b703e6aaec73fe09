"""The tables' memory is estimated before anything is built, and too much is refused."""

import re

import pytest
import yaml

from multitower.config import parse_config
from tests.small_project import EXAMPLE
from trainer.memory import MemoryBudgetError, available_memory, check_memory, table_estimates


def _config(**train):
    raw = yaml.safe_load(EXAMPLE.read_text())
    raw["train"].update(train)
    return raw


def test_estimate_counts_rows_width_and_the_optimizer_slots():
    raw = _config(embedding_optimizer="ftrl")  # accumulator and linear: 3 copies of a table
    tables = {t.table: t for t in table_estimates(parse_config(raw))}
    user = tables["user_id"]
    assert (user.key, user.rows, user.dim) == ("data.features[0]", 100_000, 16)
    assert user.bytes == 100_000 * 16 * 4 * 3
    raw["train"]["embedding_optimizer"] = "sgd"  # no slots
    assert {t.table: t for t in table_estimates(parse_config(raw))}["user_id"].bytes == (
        100_000 * 16 * 4)


def test_a_table_beyond_the_budget_is_refused_naming_the_key():
    raw = _config(memory_budget_bytes=1 << 30)
    raw["data"]["features"][3]["hash_buckets"] = 2**40  # item_id
    raw["data"]["features"][-1]["hash_buckets"] = 2**40  # recent_items shares its table
    with pytest.raises(MemoryBudgetError) as info:
        check_memory(parse_config(raw))
    message = str(info.value)
    assert "the embedding tables need about 131072.0 GiB per worker (with adagrad's slots), " \
           "more than 1.0 GiB from train.memory_budget_bytes" in message
    assert "largest: data.features[3] (table 'item_id': 1099511627776 x 16) 131072.0 GiB" \
        in message


def test_a_model_parallel_table_counts_its_share_of_rows_on_one_worker():
    raw = _config(memory_budget_bytes=1 << 30)
    raw["model"]["embeddings"] = {"tables": {"user_id": {"placement": "model_parallel"}}}
    tables = {t.table: t for t in table_estimates(parse_config(raw), workers=3)}
    assert tables["user_id"].rows == 33_334 and tables["item_id"].rows == 100_000
    assert tables["user_id"].bytes == 33_334 * 16 * 4 * 2  # with Adagrad's accumulator
    # a table too big for one worker fits as its share on 64
    raw["data"]["features"][0]["hash_buckets"] = 2**26  # 8 GiB with its slots
    with pytest.raises(MemoryBudgetError, match="or place the table model_parallel"):
        check_memory(parse_config(raw), workers=1)
    assert check_memory(parse_config(raw), workers=64)[0].rows == 2**20


def test_without_a_budget_the_workers_memory_is_the_limit():
    limit, source = available_memory()
    assert 0 < limit < 1 << 60 and source
    raw = _config()
    raw["data"]["features"][0]["hash_buckets"] = 2**62
    with pytest.raises(MemoryBudgetError, match=re.escape(f"from {source}; largest: "
                                                          "data.features[0]")):
        check_memory(parse_config(raw))
    assert check_memory(parse_config(_config()))[0].table == "user_id"  # the example fits
