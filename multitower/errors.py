"""The one error base class: every refusal multitower raises on purpose derives from it.

A refusal is an expected fault of the input or the request (a bad config key, a day not
preprocessed, a model_dir of another layout, a row that does not fit the signature). Its message
is one line (or a few, one per problem) that names the file, key, row or path and says what to
do; the command line shows the message without a traceback and exits with status 1. Anything
else is a bug and keeps its traceback.
"""

from __future__ import annotations


class MultitowerError(Exception):
    """Base class of every expected refusal; the message is meant for people."""


class InputMissingError(MultitowerError, FileNotFoundError):
    """An input the command needs does not exist (no logs for a day, a missing file)."""
