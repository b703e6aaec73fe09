"""Fixtures of the serving tests: one served project (a preprocessed day, versions 1 and 2)."""

import pytest

from tests.served_model import make_served_project


@pytest.fixture(scope="session")
def served_project(tmp_path_factory) -> dict:
    """`tests.served_model.make_served_project`: shared read-only; copy it to add versions."""
    return make_served_project(tmp_path_factory.mktemp("served"))
