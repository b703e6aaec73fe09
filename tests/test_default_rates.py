"""Learning rates left out of a config: each optimizer's documented rate; set ones stay."""

import itertools
import re
from pathlib import Path

import pytest
import yaml

from multitower.config import ConfigError, load_config
from multitower.config.train import DENSE_RATES, TABLE_RATES, TrainConfig
from tests.small_project import EXAMPLE

README = Path(__file__).resolve().parent.parent / "README.md"
DENSE = ("adam", "adagrad", "sgd")
TABLES = ("adagrad", "ftrl", "lazy_adam", "sgd")


def _documented() -> dict[str, dict[str, float]]:
    """The README's "Learning rates" table: {"dense" | "tables": {optimizer: rate}}."""
    text = README.read_text()
    section = text[text.index("**Learning rates.**"):]
    section = section[:section.index("\n\n", section.index("| optimizer |"))]
    rates: dict[str, dict[str, float]] = {"dense": {}, "tables": {}}
    for name, kind, rate in re.findall(r"^\| `(\w+)` \| (dense|tables)\b[^|]*\| ([0-9.]+) \|",
                                       section, flags=re.MULTILINE):
        rates[kind][name] = float(rate)
    return rates


def _train(**keys) -> TrainConfig:
    return TrainConfig(model_dir="m", export_dir="e", **keys)


def test_the_readme_documents_a_rate_for_every_optimizer_the_config_accepts():
    documented = _documented()
    assert set(documented["dense"]) == set(DENSE) == set(DENSE_RATES)
    assert set(documented["tables"]) == set(TABLES) == set(TABLE_RATES)


def test_no_optimizer_settings_give_the_documented_adam_and_adagrad_rates():
    documented = _documented()
    train = _train()
    assert (train.optimizer, train.embedding_optimizer) == ("adam", "adagrad")
    assert train.learning_rate == documented["dense"]["adam"]
    assert train.embedding_learning_rate == documented["tables"]["adagrad"]


@pytest.mark.parametrize(("dense", "tables"), list(itertools.product(DENSE, TABLES)))
def test_a_named_optimizer_without_a_rate_gets_its_own_documented_rate(dense, tables):
    documented = _documented()
    train = _train(optimizer=dense, embedding_optimizer=tables)
    assert train.learning_rate == documented["dense"][dense]
    assert train.embedding_learning_rate == documented["tables"][tables]


@pytest.mark.parametrize(("dense", "tables"), list(itertools.product(DENSE, TABLES)))
def test_rates_set_in_the_config_are_kept_whatever_the_optimizer(dense, tables):
    train = _train(optimizer=dense, embedding_optimizer=tables, learning_rate=0.0042,
                   embedding_learning_rate=0.77)
    assert (train.learning_rate, train.embedding_learning_rate) == (0.0042, 0.77)


def test_one_rate_set_leaves_the_other_to_its_optimizer():
    train = _train(optimizer="sgd", learning_rate=0.5, embedding_optimizer="lazy_adam")
    assert train.learning_rate == 0.5
    assert train.embedding_learning_rate == TABLE_RATES["lazy_adam"]
    train = _train(embedding_optimizer="ftrl", embedding_learning_rate=0.05)
    assert (train.learning_rate, train.embedding_learning_rate) == (DENSE_RATES["adam"], 0.05)


def test_the_example_config_leaves_its_rates_to_the_defaults():
    raw = yaml.safe_load(EXAMPLE.read_text())
    assert not {"learning_rate", "embedding_learning_rate"} & set(raw["train"])
    train = load_config(EXAMPLE).train
    assert (train.learning_rate, train.embedding_learning_rate) == (
        DENSE_RATES[train.optimizer], TABLE_RATES[train.embedding_optimizer])


def test_an_unknown_optimizer_is_the_only_error_when_no_rate_is_set(tmp_path):
    raw = yaml.safe_load(EXAMPLE.read_text())
    raw["train"].update(optimizer="adamw", embedding_optimizer="rmsprop")
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(raw))
    with pytest.raises(ConfigError) as err:
        load_config(path)
    message = str(err.value)
    assert "train.optimizer:" in message and "train.embedding_optimizer:" in message
    assert "learning_rate" not in message


def test_a_bad_rate_is_still_refused_with_a_named_optimizer(tmp_path):
    raw = yaml.safe_load(EXAMPLE.read_text())
    raw["train"].update(optimizer="sgd", learning_rate=0, embedding_learning_rate="fast")
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(raw))
    with pytest.raises(ConfigError) as err:
        load_config(path)
    assert "train.learning_rate:" in str(err.value)
    assert "train.embedding_learning_rate:" in str(err.value)
