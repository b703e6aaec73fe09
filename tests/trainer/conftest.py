"""Fixtures of the trainer tests: one small generated project, preprocessed once per session."""

import pytest

from tests.small_project import make_small_project


@pytest.fixture(scope="session")
def small_project(tmp_path_factory) -> dict:
    """Config with small tables and batch, and three preprocessed days (`tests.small_project`)."""
    return make_small_project(tmp_path_factory.mktemp("project"))
