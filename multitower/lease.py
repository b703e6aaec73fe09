"""Exclusive leases: one run at a time writes a `model_dir`, or preprocesses a day.

A lease is a small JSON file (run id, host, pid, start time, heartbeat, time-to-live) created
atomically before the run writes anything; a background thread refreshes its heartbeat every
third of the time-to-live. Another run finds the file and is refused with a message naming the
holder, unless the lease is stale:

- its heartbeat is older than its time-to-live (the holder died, or lost its storage);
- its pid is dead on this same host;
- it carries the same run id (a relaunch of the same run: the local launcher gives its workers
  one run id, a Kubernetes Job passes its uid), so a restarted run takes its lease back.

A stale lease is replaced by compare-and-swap, so two runs that find the same stale lease
cannot both win. How atomic that is depends on the store (`lease_store.py`): exclusive create
and a lock on local and shared file systems, conditional writes (`If-None-Match`, `If-Match`) on
S3. Stores with neither (`gs://`, `hdfs://` through `tf.io.gfile`) get a check-then-write lease,
which keeps out a second run started seconds or more later, but not one started in the same
instant.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import threading
import time
import uuid
from dataclasses import asdict, dataclass

from multitower.errors import MultitowerError
from multitower.lease_store import LeaseStore, store_for

log = logging.getLogger("multitower")
RUN_ID_VARIABLE = "MULTITOWER_RUN_ID"
DEFAULT_TTL_SECONDS = 120.0


class LeaseHeldError(MultitowerError):
    """Another run holds the lease; the message names it and says what to do."""


class LeaseStorageError(MultitowerError):
    """The lease file cannot be written or read (a read-only or missing location)."""


class LeaseLostError(MultitowerError):
    """This run's lease was taken over (its heartbeat had stopped); it must not publish."""


_RUN_ID: list[str] = []


def run_id() -> str:
    """This run's id: `$MULTITOWER_RUN_ID` when set, else one made once for this process.

    A launcher or a Kubernetes Job sets the variable for the processes of one run.

    It is not written back into the environment: a process this one starts is another run
    unless it is handed the id on purpose (as the local launcher hands it to its workers).
    """
    if os.environ.get(RUN_ID_VARIABLE):
        return os.environ[RUN_ID_VARIABLE]
    if not _RUN_ID:
        _RUN_ID.append(uuid.uuid4().hex)
    return _RUN_ID[0]


@dataclass(frozen=True)
class Holder:
    """What a lease file says about the run holding it."""

    run_id: str
    host: str
    pid: int
    started: float  # seconds since the epoch
    heartbeat: float
    ttl_seconds: float
    what: str

    def stale_reason(self, now: float, me: str) -> str | None:
        """Why this lease may be taken over by run `me`, or None while it holds."""
        if self.run_id == me:
            return "it is this run's own lease (a relaunch)"
        if now - self.heartbeat > self.ttl_seconds:
            return f"its heartbeat is {now - self.heartbeat:.0f} s old (ttl {self.ttl_seconds:g} s)"
        if self.host == socket.gethostname() and not _alive(self.pid):
            return f"its process {self.pid} on this host is dead"
        return None

    def describe(self, now: float) -> str:
        started = time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(self.started))
        return (f"run {self.run_id} (host {self.host}, pid {self.pid}, started {started} UTC, "
                f"last heartbeat {now - self.heartbeat:.0f} s ago)")


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    return True


def _parse(text: str) -> Holder | None:
    try:
        return Holder(**json.loads(text))
    except (ValueError, TypeError):
        return None  # a half-written or foreign file: treated as stale below


class Lease:
    """An exclusive lease on `path` for this run; a context manager.

    Args:
        path: The lease file (a local path or a URL).
        what: What it protects, for messages (e.g. `model_dir /data/model`).
        ttl_seconds: How long a lease lives without a heartbeat.
        hint: What the refused run should do, appended to the refusal.
        store: How the file is written; chosen from the path's scheme when None.
    """

    def __init__(self, path: str, what: str, ttl_seconds: float = DEFAULT_TTL_SECONDS,
                 hint: str = "", store: LeaseStore | None = None) -> None:
        if ttl_seconds <= 0:
            raise ValueError(f"ttl_seconds must be > 0, got {ttl_seconds}")
        self.path = path
        self.what = what
        self.ttl_seconds = float(ttl_seconds)
        self.hint = hint
        self.run_id = run_id()
        self._store = store or store_for(path)
        self._tag: str | None = None
        self._lost = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._started = 0.0

    def _record(self, now: float) -> str:
        holder = Holder(self.run_id, socket.gethostname(), os.getpid(), self._started, now,
                        self.ttl_seconds, self.what)
        return json.dumps(asdict(holder), sort_keys=True)

    def acquire(self) -> Lease:
        """Takes the lease, or raises `LeaseHeldError` naming the holder.

        Raises:
            LeaseHeldError: Another run holds it.
            LeaseStorageError: The lease file cannot be written (e.g. a read-only folder).
        """
        try:
            return self._acquire()
        except OSError as err:
            raise LeaseStorageError(
                f"{self.what}: cannot write the lease {self.path}: "
                f"{err.strerror or err}; is the location writable?") from None

    def _acquire(self) -> Lease:
        self._started = time.time()
        for _ in range(3):  # a lease released or replaced between our read and our write
            tag = self._store.create(self.path, self._record(self._started))
            if tag is not None:
                return self._held(tag, "took")
            found = self._store.read(self.path)
            if found is None:
                continue
            text, old_tag = found
            holder, now = _parse(text), time.time()
            reason = "the lease file is unreadable" if holder is None else (
                holder.stale_reason(now, self.run_id))
            if reason is None:
                raise LeaseHeldError(
                    f"{self.what} is in use by {holder.describe(now)}: {self.path}. "
                    f"{self.hint}".rstrip())
            tag = self._store.replace(self.path, self._record(now), old_tag)
            if tag is not None:
                log.info("took over the lease %s: %s", self.path, reason)
                return self._held(tag, "took over")
        raise LeaseHeldError(f"{self.what}: the lease {self.path} keeps changing; another run "
                             f"is starting at the same time. {self.hint}".rstrip())

    def _held(self, tag: str, verb: str) -> Lease:
        self._tag = tag
        self._thread = threading.Thread(target=self._beat, name="lease-heartbeat", daemon=True)
        self._thread.start()
        log.debug("%s the lease %s", verb, self.path)
        return self

    def _beat(self) -> None:
        while not self._stop.wait(self.ttl_seconds / 3):
            try:
                tag = self._store.replace(self.path, self._record(time.time()), self._tag)
            except Exception as err:  # noqa: BLE001  (a storage hiccup: try again next beat)
                log.warning("could not refresh the lease %s: %s", self.path, err)
                continue
            if tag is None:
                log.error("the lease %s was taken over by another run", self.path)
                self._lost.set()
                return
            self._tag = tag

    def check(self) -> None:
        """Raises `LeaseLostError` if another run took the lease over; call before publishing."""
        if self._lost.is_set():
            raise LeaseLostError(
                f"{self.what}: this run lost its lease {self.path} to another run (its "
                f"heartbeat could not be written for {self.ttl_seconds:g} s); nothing was "
                "published, run it again")

    def release(self) -> None:
        """Stops the heartbeat and deletes the lease if it is still this run's."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=10)
        if self._tag is not None and not self._lost.is_set():
            self._store.delete(self.path, self._tag)
        self._tag = None

    def __enter__(self) -> Lease:
        return self.acquire()

    def __exit__(self, *exc: object) -> None:
        self.release()
