"""Fixtures of the trainer tests: one small generated project, preprocessed once per session."""

import pytest

from tests.helpers import make_small_project


@pytest.fixture(scope="session")
def small_project(tmp_path_factory) -> dict:
    """Config with small tables and batch, and three preprocessed days (`tests.helpers`)."""
    return make_small_project(tmp_path_factory.mktemp("project"))
