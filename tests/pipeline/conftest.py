"""Fixtures shared by the pipeline tests: the example config's data section."""

import pytest
import yaml

from multitower.config import DataConfig, parse_config
from tests.small_project import EXAMPLE


@pytest.fixture(scope="session")
def example_raw() -> dict:
    """The example config as a plain dict, to be copied and edited by tests."""
    return yaml.safe_load(EXAMPLE.read_text())


@pytest.fixture(scope="session")
def data_config(example_raw: dict) -> DataConfig:
    return parse_config(example_raw, str(EXAMPLE)).data
