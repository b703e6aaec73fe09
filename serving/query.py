"""`multitower query`: a JSON-lines file of raw rows scored by TF Serving, in input order.

The file is read twice. The first pass decodes (`multitower.rows.decode_line`) and checks every
row against the served signature (`ServingClient.check_row`), before anything is sent: one bad
row refuses the whole file, listing the bad rows, unless invalid rows are skipped, in which case
each is written with its reason as `multitower predict --skip-invalid` writes it. The second
pass sends the valid rows in batches and writes one JSON object of scores per row, in input
order, rounded as `multitower predict` rounds them. Reading twice keeps memory flat on any file
size; a file that changes between the passes is refused. A list-valued feature is a JSON array
in a row, cut and padded by the client to its input's length (`serving.lists`), with the pads
the client was given (the config's, `query --config`) or the defaults.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Callable, Iterator
from typing import Any, NamedTuple, TextIO

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

from multitower.rows import decode_line
from serving.client import ModelInfo, ServingClient, ServingError
from serving.predict import LISTED_BAD_ROWS, BadRow, read_lines

PROTOCOLS = ("grpc", "rest")
PROGRESS_MIN_BATCHES = 4  # fewer batches than this end too soon for a progress bar to help


class QueryError(ServingError, ValueError):
    """The input rows cannot be scored as asked; the message names the file and rows."""


class QueryOutcome(NamedTuple):
    """What `query_file` did: rows scored and invalid, the first invalid rows, and versions."""

    scored: int
    invalid: int
    first_invalid: list[BadRow]
    versions: tuple[int, ...]  # the versions that answered, when the protocol names them
    info: ModelInfo


def open_client(protocol: str, server: str, model: str, **options: Any) -> ServingClient:
    """A `RestClient` or `GrpcClient` (imported only when used: gRPC loads TensorFlow).

    Args:
        protocol: `grpc` or `rest`.
        server: `HOST:PORT`.
        model: The served model's name.
        **options: `ServingClient`'s options, and `json_format` for REST.

    Raises:
        ServingError: An unknown protocol, or a bad option.
    """
    if protocol == "rest":
        from serving.rest_client import RestClient

        return RestClient(server, model, **options)
    if protocol == "grpc":
        from serving.grpc_client import GrpcClient

        options.pop("json_format", None)
        return GrpcClient(server, model, **options)
    raise ServingError(f"unknown protocol {protocol!r}; expected one of {PROTOCOLS}")


def _checked_lines(
    client: ServingClient, path: str
) -> Iterator[tuple[int, bytes, dict[str, Any] | None, str | None]]:
    for number, text in read_lines(path):
        row, reason = decode_line(text)
        features = None
        if reason is None:
            features, reason = client.check_row(row)
        yield number, text, features, reason


def _refusal(path: str, invalid: int, first: list[BadRow]) -> str:
    lines = [f"{path}: {invalid} invalid row{'s' * (invalid > 1)}, so nothing was sent to TF "
             f"Serving (--skip-invalid sends the valid rows and writes the invalid ones with "
             f"their reasons):"]
    lines += [f"  {b.source}:{b.line}: {b.reason}" for b in first]
    if invalid > len(first):
        lines.append(f"  ... and {invalid - len(first)} more")
    return "\n".join(lines)


@contextlib.contextmanager
def _progress(total: int, enabled: bool) -> Iterator[Callable[[int], None]]:
    """`advance(rows)`: a bar on stderr when enabled, else nothing."""
    if not enabled:
        yield lambda rows: None
        return
    columns = (TextColumn("scoring"), BarColumn(), MofNCompleteColumn(), TextColumn("rows"),
               TimeRemainingColumn())
    with Progress(*columns, console=Console(stderr=True), transient=True) as bar:
        task = bar.add_task("scoring", total=total)
        yield lambda rows: bar.advance(task, rows)


def query_file(
    client: ServingClient, path: str, scores_out: TextIO, rejected_out: TextIO | None,
    batch_size: int | None = None, progress: bool = False,
) -> QueryOutcome:
    """Checks every row of a JSON-lines file, then scores the valid ones on TF Serving.

    With `rejected_out`, invalid rows are skipped: each is written there as `{"source", "line",
    "reason", "raw"}` and each score object starts with its input `"line"`. Without it, an
    invalid row refuses the file before any row is sent, listing the first `LISTED_BAD_ROWS`.

    Args:
        client: The client of the served model.
        path: A `.jsonl` or `.jsonl.gz` file of raw feature rows.
        scores_out: Where the scores go, one JSON object per scored row, in input order.
        rejected_out: Where invalid rows go, or None to refuse a file holding any.
        batch_size: Rows per request (default: the client's).
        progress: Show a progress bar on stderr when there are several batches to send.

    Returns:
        The counts, the first invalid rows, and what the server said about the model.

    Raises:
        QueryError: Without `rejected_out`, the file holds invalid rows; the model has an
            output named `line` (with `rejected_out`); or the file changed while being read.
        ServingError: The server refused or did not answer (see `serving.client`).
        PredictError: The file cannot be read (see `serving.predict.read_lines`).
    """
    next(read_lines(path), None)  # an unreadable file is refused before the server is asked
    info = client.describe()
    outputs = info.signature.outputs
    skip = rejected_out is not None
    if skip and "line" in outputs:
        raise QueryError(f"{client.target} has an output named 'line', which skipping invalid "
                         f"rows adds to each score; query without skipping")
    valid = invalid = 0
    first_invalid: list[BadRow] = []
    for number, text, _, reason in _checked_lines(client, path):
        if reason is None:
            valid += 1
            continue
        invalid += 1
        bad = BadRow(path, number, reason, text)
        if len(first_invalid) < LISTED_BAD_ROWS:
            first_invalid.append(bad)
        if rejected_out is not None:
            rejected_out.write(json.dumps(bad.record()) + "\n")
    if invalid and not skip:
        raise QueryError(_refusal(path, invalid, first_invalid))

    size = batch_size or client.batch_size
    versions: set[int] = set()
    scored = 0
    batch: list[tuple[int, dict[str, Any]]] = []

    def flush(advance: Callable[[int], None]) -> None:
        nonlocal scored
        answer = client.score_batch([features for _, features in batch])
        if answer.version is not None:
            versions.add(answer.version)
        for i, (number, _) in enumerate(batch):
            shown = {name: round(answer.scores[name][i], 6) for name in outputs}
            scores_out.write(json.dumps({"line": number, **shown} if skip else shown) + "\n")
        scored += len(batch)
        advance(len(batch))
        batch.clear()

    lines = seen = 0
    with _progress(valid, progress and valid > PROGRESS_MIN_BATCHES * size) as advance:
        for number, _, features, reason in _checked_lines(client, path):
            lines += 1
            if reason is None:
                seen += 1
                if seen > valid:
                    continue  # the file grew since it was checked: refused below
                batch.append((number, features))  # type: ignore[arg-type]
                if len(batch) == size:
                    flush(advance)
        if batch:
            flush(advance)
    if seen != valid or lines != valid + invalid:
        raise QueryError(f"{path} changed while it was being scored ({valid + invalid} lines "
                         f"when checked, {lines} when sent); query a file that is not being "
                         f"written")
    return QueryOutcome(scored, invalid, first_invalid, tuple(sorted(versions)), info)


def summary(outcome: QueryOutcome, client: ServingClient, rejected_to: str | None) -> str:
    """The closing line: rows scored, by which version, on which server, and rows skipped."""
    versions = outcome.versions or ((outcome.info.version,) if outcome.info.version else ())
    named = client.target
    if client.version is None and versions:  # the version the server chose, or the label's
        listed = f"version{'s' * (len(versions) > 1)} {', '.join(map(str, versions))}"
        named += f" ({listed})" if client.label else f" {listed}"
    text = f"scored {outcome.scored} rows with {named} at {client.address} ({client.protocol})"
    if rejected_to is not None:
        text += (f"; skipped {outcome.invalid} invalid row{'s' * (outcome.invalid != 1)}, "
                 f"written with their reasons to {rejected_to}")
    return text
