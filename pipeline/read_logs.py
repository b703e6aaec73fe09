"""Finding a day's log files and reading them line by line, keeping file and line number.

Line numbers travel with each line so that a rejected row can be found again in its file.
"""

from __future__ import annotations

import gzip
import os
from collections.abc import Iterator

import apache_beam as beam
import tensorflow as tf
from apache_beam.io import fileio
from apache_beam.io.filesystem import CompressionTypes

from multitower.errors import InputMissingError
from multitower.storage import is_remote
from pipeline.validate import LogLine

LOG_SUFFIXES = (".jsonl", ".jsonl.gz")


def _absolute(path: str) -> str:
    return path if "://" in path else os.path.abspath(path)


def resolve_inputs(pattern: str, date: str) -> list[str]:
    """The log files of one day, sorted.

    Args:
        pattern: `config.data.logs_for(date)`: a directory (every `*.jsonl` and `*.jsonl.gz` file
            in it is read) or a glob (every matching file is read).
        date: The day, only to name it in errors.

    Raises:
        InputMissingError: Nothing to read.
    """
    # An unreachable or unauthorized object store looks like an empty one to tf.io.gfile.
    hint = (" (on an object store also check the endpoint and credentials: AWS_ENDPOINT_URL_S3,"
            " AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY)" if is_remote(pattern) else "")
    if tf.io.gfile.isdir(pattern):
        base = pattern.rstrip("/")
        files = [p for suffix in LOG_SUFFIXES for p in tf.io.gfile.glob(f"{base}/*{suffix}")
                 if not tf.io.gfile.isdir(p)]
        if not files:
            raise InputMissingError(
                f"no input logs for {date}: the directory {pattern} holds no "
                f"{' or '.join('*' + s for s in LOG_SUFFIXES)} file{hint}")
    else:
        files = [p for p in tf.io.gfile.glob(pattern) if not tf.io.gfile.isdir(p)]
        if not files:
            raise InputMissingError(
                f"no input logs for {date}: nothing matches {pattern} (check data.logs in the "
                f"config and that the day was exported){hint}")
    return sorted(_absolute(p) for p in files)


class _ReadLinesFn(beam.DoFn):
    def process(self, readable: fileio.ReadableFile) -> Iterator[LogLine]:
        path = readable.metadata.path
        # Beam's own gzip reader splits lines in Python; GzipFile iterates lines in C.
        with readable.open(compression_type=CompressionTypes.UNCOMPRESSED) as raw:
            handle = gzip.GzipFile(fileobj=raw, mode="rb") if path.endswith(".gz") else raw
            for number, line in enumerate(handle, start=1):
                yield LogLine(path, number, line.rstrip(b"\r\n"))


class ReadLogLines(beam.PTransform):
    """Reads files named by a PCollection of paths or globs into `LogLine`s.

    Files are decompressed by their `.gz` extension. Each file is read by one worker, so the
    lines are reshuffled afterwards to spread validation and encoding over all workers.
    """

    def expand(self, patterns: beam.PCollection[str]) -> beam.PCollection[LogLine]:
        return (
            patterns
            | "Match" >> fileio.MatchAll(fileio.EmptyMatchTreatment.DISALLOW)
            | "Open" >> fileio.ReadMatches()
            | "Lines" >> beam.ParDo(_ReadLinesFn())
            | "Spread" >> beam.Reshuffle()
        )
