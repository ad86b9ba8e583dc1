"""The study's Optuna storage and what several workers need to share it safely: a database
lock around planning, heartbeats for running trials, and failing the trials of dead workers.

A run folder's SQLite or journal file has one writer (the run holds a file lock, see
``session``); a PostgreSQL or MySQL study can have many workers (local processes on several
machines, or Ray drivers). They never plan at the same time: enqueueing grid points, seeds and
interrupted trials happens under a database-level lock (``planning_lock``), so a (configuration,
seed) pair is enqueued once. Each running trial sends a heartbeat every
``heartbeat_interval()`` seconds (from the process that trains it, or from the Ray driver for
Ray trials); a trial without one for ``heartbeat_grace()`` seconds belongs to a dead worker and
is failed the next time any worker plans, then enqueued again.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import random
import re
import threading
import time
import warnings
from typing import Iterable, Iterator

import optuna
from optuna.storages import BaseStorage, RDBStorage

from scaling_lab.errors import ScalingLabError

DEFAULT_HEARTBEAT_INTERVAL_S, DEFAULT_HEARTBEAT_GRACE_S = 30, 120


def _seconds(variable: str, default: int) -> int:
    text = os.environ.get(variable)
    if text is None:
        return default
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise ScalingLabError(f"environment variable {variable}={text!r}: expected a whole number of seconds of at least 1")
    return value


def heartbeat_interval() -> int:
    """Seconds between heartbeats (``SCALING_LAB_HEARTBEAT_INTERVAL``, default 30)."""
    return _seconds("SCALING_LAB_HEARTBEAT_INTERVAL", DEFAULT_HEARTBEAT_INTERVAL_S)


def heartbeat_grace() -> int:
    """Seconds without a heartbeat after which a running trial is failed and run again
    (``SCALING_LAB_HEARTBEAT_GRACE``, default 120); more than two intervals, so one late beat
    does not fail a live trial."""
    grace = _seconds("SCALING_LAB_HEARTBEAT_GRACE", DEFAULT_HEARTBEAT_GRACE_S)
    if grace <= 2 * heartbeat_interval():
        raise ScalingLabError(
            f"environment variable SCALING_LAB_HEARTBEAT_GRACE={grace}: must be more than twice "
            f"SCALING_LAB_HEARTBEAT_INTERVAL={heartbeat_interval()} seconds"
        )
    return grace


_PASSWORD = re.compile(r"(://[^:/@\s]*:)[^@\s]+@")


def masked(text: str) -> str:
    """``text`` with the password of every URL in it (``postgresql://user:secret@host``) shown
    as ``***``, for messages: a database URL is often pasted into issues and logs."""
    return _PASSWORD.sub(r"\1***@", text)


def is_local(url: str) -> bool:
    """A file in the run folder (SQLite or journal): one writer at a time."""
    return url.startswith(("sqlite:", "journal:"))


def open_storage(url: str, where: str) -> BaseStorage:
    """The study's storage; a shared database gets heartbeats (``record_heartbeat``)."""
    try:
        if url.startswith("journal:///"):
            from optuna.storages.journal import JournalFileBackend, JournalStorage

            return JournalStorage(JournalFileBackend(url[len("journal:///") - 1 :]))
        if is_local(url):
            return RDBStorage(url)
        return _shared_storage(url)
    except ModuleNotFoundError as exc:
        raise ScalingLabError(f"{where}: storage {masked(url)!r} needs the database driver {exc.name!r}; install it (pip install 'scaling-lab[postgres]')") from None
    except Exception as exc:  # noqa: BLE001 - SQLAlchemy raises many kinds for a bad URL or an unreachable server
        detail = masked(str(exc).splitlines()[0] if str(exc) else "")
        raise ScalingLabError(f"{where}: storage {masked(url)!r} cannot be opened ({type(exc).__name__}: {detail}); give sqlite, journal or a reachable SQLAlchemy URL") from None


def _shared_storage(url: str, attempts: int = 3) -> RDBStorage:
    """A shared database's storage. Workers started together on an empty database race to
    create Optuna's tables; the loser finds them made when it tries again."""
    from sqlalchemy.exc import IntegrityError, ProgrammingError

    def connect() -> RDBStorage:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            return RDBStorage(url, heartbeat_interval=heartbeat_interval(), grace_period=heartbeat_grace())

    for _ in range(attempts - 1):
        try:
            return connect()
        except (IntegrityError, ProgrammingError):
            time.sleep(0.5 + random.random())
    return connect()


def _lock_key(study_name: str) -> int:
    """A signed 64-bit advisory-lock key for the study (PostgreSQL's lock space)."""
    return int.from_bytes(hashlib.sha256(f"scaling-lab:{study_name}".encode()).digest()[:8], "big", signed=True)


_held = threading.local()  # planning locks this thread holds (the lock is re-entrant)


@contextlib.contextmanager
def planning_lock(storage: BaseStorage, study_name: str) -> Iterator[None]:
    """Hold the study's planning lock. A file storage has one writer (the run folder's lock), so
    it needs none; PostgreSQL and MySQL take a session lock that dies with the worker. Taking it
    again inside is free (planning a trial may resolve a group's best values)."""
    held = _held.__dict__.setdefault("names", set())
    if not isinstance(storage, RDBStorage) or is_local(str(storage.engine.url)) or study_name in held:
        yield
        return
    from sqlalchemy import text

    dialect = storage.engine.dialect.name
    with storage.engine.connect() as connection:
        if dialect == "postgresql":
            connection.execute(text("SELECT pg_advisory_lock(:key)"), {"key": _lock_key(study_name)})
            release = text("SELECT pg_advisory_unlock(:key)"), {"key": _lock_key(study_name)}
        elif dialect in ("mysql", "mariadb"):
            connection.execute(text("SELECT GET_LOCK(:key, -1)"), {"key": f"scaling-lab:{study_name}"[:64]})
            release = text("SELECT RELEASE_LOCK(:key)"), {"key": f"scaling-lab:{study_name}"[:64]}
        else:
            raise ScalingLabError(
                f"storage {storage.engine.url!r}: several workers need a database with locks (postgresql or mysql); "
                "use sqlite or journal for a study run by one process"
            )
        connection.commit()
        held.add(study_name)
        try:
            yield
        finally:
            held.discard(study_name)
            connection.execute(*release)
            connection.commit()


def heartbeats_enabled(storage: BaseStorage) -> bool:
    return isinstance(storage, RDBStorage) and storage.get_heartbeat_interval() is not None


class Heartbeat:
    """Records a heartbeat for each running trial id it is given, every interval, from a
    background thread, until closed. A local worker beats for its one trial; a Ray driver for
    all of its running trials."""

    def __init__(self, storage: BaseStorage, trial_ids: Iterable[int] = ()):
        self.storage = storage
        self._ids: set[int] = set(trial_ids)
        self._guard = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        if heartbeats_enabled(storage):
            self._beat()
            self._thread = threading.Thread(target=self._run, name="scaling-lab-heartbeat", daemon=True)
            self._thread.start()

    def add(self, trial_id: int) -> None:
        with self._guard:
            self._ids.add(trial_id)
        if self._thread is not None:
            self.storage.record_heartbeat(trial_id)

    def discard(self, trial_id: int) -> None:
        with self._guard:
            self._ids.discard(trial_id)

    def _beat(self) -> None:
        with self._guard:
            ids = sorted(self._ids)
        for trial_id in ids:
            with contextlib.suppress(Exception):  # a finished trial or a brief database outage: try again next beat
                self.storage.record_heartbeat(trial_id)

    def _run(self) -> None:
        while not self._stop.wait(self.storage.get_heartbeat_interval()):
            self._beat()

    def close(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)

    def __enter__(self) -> "Heartbeat":
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


def fail_stale_trials(study: optuna.Study, storage: BaseStorage) -> None:
    """Fail the study's running trials whose worker stopped beating (their record says nothing,
    so they count as interrupted and are enqueued again by the next plan). ``storage``: the
    study's storage as opened (the study wraps it in a cache)."""
    if heartbeats_enabled(storage):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            optuna.storages.fail_stale_trials(study)
