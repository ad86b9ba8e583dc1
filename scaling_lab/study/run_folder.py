"""A run folder's derived files checked before they are read, and rebuilt from the study database.

The study database (``study.db``, ``study.journal`` or a shared SQLAlchemy URL) is the source of
truth; ``study.json``, ``results.parquet`` and ``results.csv`` are derived from it after every
trial. ``status``, ``report``, ``derive`` and a resuming ``run`` call ``check_run_folder`` first:
a derived file that cannot be read, or does not say what it must, is moved aside as
``<name>.damaged`` and rebuilt from the database with a one-line warning. When the database
itself is missing or unreadable, the command stops with an error naming it and touches nothing.
"""

from __future__ import annotations

import contextlib
import json
import sqlite3
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

import optuna
import pandas as pd

from scaling_lab.documents import DocumentError, parse_json
from scaling_lab.errors import ScalingLabError
from scaling_lab.files import atomic_write, atomic_write_text, read_parquet
from scaling_lab.schema import TRIAL_STATES
from scaling_lab.study import results
from scaling_lab.study.study_files import DIRECTIONS, load_study, run_dir_for
from scaling_lab.study.storage import masked
from scaling_lab.trial import TASK_KINDS

STUDY_JSON, PARQUET, CSV = "study.json", "results.parquet", "results.csv"
DERIVED = (STUDY_JSON, PARQUET, CSV)
SQLITE_HEADER = b"SQLite format 3\x00"
OPTUNA_TABLES = frozenset({"studies", "trials", "version_info"})


# --- validation -----------------------------------------------------------------------------


def study_info_problem(info: Any) -> str | None:
    """What is wrong with a ``study.json`` content, or None when it is usable."""
    if not isinstance(info, dict):
        return f"expected a JSON object, got {type(info).__name__}"
    if not isinstance(info.get("name"), str) or not info["name"]:
        return "'name' must be a non-empty string"
    objectives = info.get("objectives")
    if not isinstance(objectives, list) or not objectives:
        return f"'objectives' must be a non-empty list of {{metric, direction}} objects, got {objectives!r}"
    for index, objective in enumerate(objectives):
        if not isinstance(objective, dict) or not isinstance(objective.get("metric"), str) or objective.get("direction") not in DIRECTIONS:
            return f"objectives[{index}] must be {{\"metric\": NAME, \"direction\": maximize|minimize}}, got {objective!r}"
    planned = info.get("planned_trials")
    if not isinstance(planned, int) or isinstance(planned, bool) or planned < 0:
        return f"'planned_trials' must be an integer of at least 0, got {planned!r}"
    if not isinstance(info.get("finished"), bool):
        return f"'finished' must be true or false, got {info.get('finished')!r}"
    if info.get("task_kind") is not None and info["task_kind"] not in TASK_KINDS:
        return f"'task_kind' must be one of {', '.join(TASK_KINDS)}, got {info['task_kind']!r}"
    for key, kind in (("base_spec", dict), ("groups", list)):
        if info.get(key) is not None and not isinstance(info[key], kind):
            return f"{key!r} must be a JSON {'object' if kind is dict else 'list'}, got {type(info[key]).__name__}"
    return None


def table_problem(frame: pd.DataFrame) -> str | None:
    """What is wrong with a results table, or None when every row has a trial id and a state."""
    missing = [column for column in ("trial_id", "state") if column not in frame.columns]
    if missing:
        return f"missing column(s) {', '.join(missing)}"
    unknown = sorted(set(frame["state"].astype(str)) - set(TRIAL_STATES))
    if unknown:
        return f"unknown state(s) {', '.join(map(repr, unknown))}"
    ids = pd.to_numeric(frame["trial_id"], errors="coerce")
    if ids.isna().any() or (ids != ids.round()).any() or ids.duplicated().any():
        return "column 'trial_id' must hold distinct integers"
    return None


def _read_table(path: Path) -> pd.DataFrame:
    if path.name == PARQUET:
        return read_parquet(path)
    return pd.read_csv(path, keep_default_na=False, na_values=[""])


def file_problem(path: Path) -> str | None:
    """Why the derived file ``path`` (which exists) cannot be trusted, or None."""
    if path.is_dir():
        return "a folder, not a file"
    try:
        if path.name == STUDY_JSON:
            return study_info_problem(parse_json(path.read_bytes(), str(path)))
        return table_problem(_read_table(path))
    except DocumentError as exc:
        return str(exc).removeprefix(f"{path}: ")
    except Exception as exc:  # noqa: BLE001 - pyarrow, pandas and the OS raise many kinds for a damaged file
        return f"unreadable: {type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}".rstrip(": ")


# --- the database ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Database:
    """Where a run folder's study lives: ``url`` for Optuna, ``name`` for messages."""

    url: str
    name: str
    path: Path | None  # the file of a local database

    @property
    def present(self) -> bool:
        return self.path is None or self.path.is_file()


def find_database(run_dir: Path, storage_url: str | None = None) -> Database:
    """The run folder's own ``study.db``/``study.journal`` (also after the folder was moved), else
    the given or recorded shared storage, else the default ``study.db`` (possibly missing)."""
    for file, scheme in (("study.db", "sqlite:///"), ("study.journal", "journal:///")):
        if (run_dir / file).is_file():
            return Database(f"{scheme}{run_dir / file}", str(run_dir / file), run_dir / file)
    if storage_url is None:
        try:
            recorded = json.loads((run_dir / STUDY_JSON).read_text()).get("storage")
        except Exception:  # noqa: BLE001 - a damaged study.json records nothing usable
            recorded = None
        storage_url = recorded if isinstance(recorded, str) else None
    if storage_url and not storage_url.startswith(("sqlite:", "journal:")):
        return Database(storage_url, f"the study database {masked(storage_url)}", None)
    return Database(f"sqlite:///{run_dir / 'study.db'}", str(run_dir / "study.db"), run_dir / "study.db")


def database_problem(path: Path) -> str | None:
    """What makes a run folder's own ``study.db`` unusable, said as the end of "the study
    database ...", or None when it is an Optuna database (or absent: a new study). Read only:
    a 0-byte file or another application's database is refused, not adopted by Optuna."""
    if not path.exists():
        return None
    if path.is_dir():
        return "is a folder, not a database file"
    if path.stat().st_size == 0:
        return "is empty (0 bytes)"
    with open(path, "rb") as handle:
        if handle.read(len(SQLITE_HEADER)) != SQLITE_HEADER:
            return "is damaged (not an SQLite database)"
    try:
        with contextlib.closing(sqlite3.connect(path)) as connection:
            tables = {row[0] for row in connection.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
            check = connection.execute("PRAGMA quick_check").fetchone()[0]
    except sqlite3.OperationalError as exc:
        if "locked" in str(exc):  # a run is writing it (status and report may read a running study)
            return None
        return f"is damaged ({exc})"
    except sqlite3.DatabaseError as exc:
        return f"is damaged ({exc})"
    if check != "ok":
        return f"is damaged (SQLite's check: {check})"
    if not OPTUNA_TABLES <= tables:
        return f"is another application's SQLite database (tables {', '.join(sorted(tables)) or 'none'}), not an Optuna study"
    return None


def check_database(database: Database) -> None:
    """Refuse a run folder's own database file that is unusable (``database_problem``), before
    anything reads or writes it; a shared database is the server's business."""
    problem = database_problem(database.path) if database.path is not None and database.url.startswith("sqlite:") else None
    if problem:
        raise ScalingLabError(
            f"{database.name}: the study database {problem}. Nothing was read or written: restore the database, or "
            "move the run folder away (or give another --run-dir) to start the study afresh"
        )


def _open_storage(database: Database) -> optuna.storages.BaseStorage:
    if not database.present:
        raise ScalingLabError(f"{database.name}: the study database is missing")
    if database.url.startswith("journal:///"):
        from optuna.storages.journal import JournalFileBackend, JournalStorage

        return JournalStorage(JournalFileBackend(str(database.path)))
    check_database(database)
    return optuna.storages.RDBStorage(database.url, skip_table_creation=True)


def load_stored_study(database: Database, name: str | None = None) -> optuna.Study:
    """The study in ``database`` (read only: nothing is created); errors name the database."""
    verbosity = optuna.logging.get_verbosity()
    optuna.logging.set_verbosity(optuna.logging.ERROR)
    try:
        storage = _open_storage(database)
        names = [summary.study_name for summary in optuna.get_all_study_summaries(storage)]
        if name is None and len(names) == 1:
            name = names[0]
        if name is None:
            raise ScalingLabError(f"{database.name}: holds {len(names)} studies ({', '.join(names) or 'none'}); its study.json would say which is this run folder's")
        if name not in names:
            raise ScalingLabError(f"{database.name}: the study database holds no study {name!r} (it holds {names or 'none'})")
        return optuna.load_study(study_name=name, storage=storage)
    except ScalingLabError:
        raise
    except Exception as exc:  # noqa: BLE001 - SQLAlchemy, sqlite3 and the journal raise many kinds
        raise ScalingLabError(f"{database.name}: the study database cannot be read ({type(exc).__name__}: {str(exc).splitlines()[0]})") from None
    finally:
        optuna.logging.set_verbosity(verbosity)


# --- checking and rebuilding ----------------------------------------------------------------


def damaged_files(run_dir: Path) -> dict[str, str]:
    """Derived files of ``run_dir`` that exist but cannot be trusted: name -> why."""
    found = {name: file_problem(run_dir / name) for name in DERIVED if (run_dir / name).exists()}
    return {name: problem for name, problem in found.items() if problem}


def _rebuilt_content(study: optuna.Study, database: Database, name: str, info: dict[str, Any] | None) -> Any:
    stored = study.user_attrs.get(results.INFO_ATTR)
    if study_info_problem(stored) is None:
        info = stored
    if name == STUDY_JSON:
        if info is None:
            raise ScalingLabError(
                f"{database.name}: holds the trials but not the study record that {STUDY_JSON} is rebuilt from (written by "
                "scaling-lab before this check existed); run the study again (scaling-lab run STUDY.yaml) to rewrite it"
            )
        return info
    task_kind = (info or {}).get("task_kind") or "detection"
    return results.results_frame(study.get_trials(deepcopy=False), task_kind)


def check_run_folder(run_dir: Path, storage_url: str | None = None, rebuild: bool = True, err: TextIO | None = None) -> list[str]:
    """Rebuild every damaged derived file of ``run_dir`` from the study database (or, with
    ``rebuild=False``, only move it aside: a resuming run rewrites it). Returns their names.

    A derived file that is missing is rebuilt too when the run folder holds its database (a
    results table deleted by hand would otherwise read as "no trials yet"). The damaged file is kept as
    ``<name>.damaged``; a missing or unreadable database is a ``ScalingLabError`` naming it,
    raised before anything is moved.
    """
    err = err if err is not None else sys.stderr
    database = find_database(run_dir, storage_url)
    check_database(database)
    damaged = damaged_files(run_dir)
    local = database.path is not None and database.present
    missing = [name for name in DERIVED if not (run_dir / name).exists()] if local and rebuild else []
    if not damaged and not missing:
        return []
    if damaged:
        where = ", ".join(f"{run_dir / name} ({why})" for name, why in damaged.items())
        try:
            study = load_stored_study(database, _valid_info(run_dir).get("name") if STUDY_JSON not in damaged else None)
        except ScalingLabError as exc:
            raise ScalingLabError(f"{exc}; so the damaged {where} cannot be rebuilt from it. Restore the database, or move the run folder away and run the study again") from None
    else:
        study = load_stored_study(database, _valid_info(run_dir).get("name"))
    info = None if STUDY_JSON in damaged else _valid_info(run_dir)
    contents = {name: _rebuilt_content(study, database, name, info) for name in (*damaged, *missing)} if rebuild else {}
    for name in (*damaged, *missing):
        path = run_dir / name
        if name in damaged:
            path.replace(path.with_name(f"{name}.damaged"))
        if rebuild:
            _write(path, contents[name])
        how = "moved aside; this run rewrites it from" if not rebuild else "rebuilt from"
        state = f"damaged ({damaged[name]})" if name in damaged else "missing"
        kept = f" (the damaged file is kept as {name}.damaged)" if name in damaged else ""
        print(f"warning: {path} was {state}; {how} {database.name}{kept}", file=err, flush=True)
    return [*damaged, *missing]


def _valid_info(run_dir: Path) -> dict[str, Any]:
    try:
        info = json.loads((run_dir / STUDY_JSON).read_text())
    except (OSError, ValueError):
        return {}
    return info if study_info_problem(info) is None else {}


def _write(path: Path, content: Any) -> None:
    if path.name == STUDY_JSON:
        atomic_write_text(path, json.dumps(content, indent=2, default=str) + "\n")
    elif path.name == PARQUET:
        atomic_write(path, lambda temporary: content.to_parquet(temporary, index=False))
    else:
        atomic_write(path, lambda temporary: content.to_csv(temporary, index=False))


def check_before_resume(run_dir: Path, storage_is_local: bool, storage_url: str) -> None:
    """Before a run continues in ``run_dir``: damaged derived files are moved aside (the run
    rewrites them from the database); results without their local database are refused, since
    the run would start a new study over them."""
    database = find_database(run_dir, storage_url)
    if storage_is_local:
        check_database(database)
    has_results = any((run_dir / name).exists() for name in DERIVED)
    if storage_is_local and has_results and not database.present:
        raise ScalingLabError(
            f"{database.name}: the study database is missing, but {run_dir} holds results of an earlier run; a new run would "
            "start over and overwrite them. Restore the database, or give another run folder (--run-dir)"
        )
    if database.present and damaged_files(run_dir):
        check_run_folder(run_dir, storage_url, rebuild=False)


def checked_run_dir(target: str | Path, profile: str | None = None) -> Path:
    """The run folder of a study file (of its ``profile``) or run folder (``status``,
    ``report``, ``derive``), its damaged derived files rebuilt. A study file names a shared
    database the folder may not."""
    run_dir = run_dir_for(target, profile)
    local = any((run_dir / name).is_file() for name in ("study.db", "study.journal"))
    storage_url = None
    if Path(target).is_file() and not local and damaged_files(run_dir):
        try:
            storage_url = load_study(target, profile=profile, run_dir=run_dir).storage_url
        except ScalingLabError:
            pass  # then the storage study.json records, or the default
    check_run_folder(run_dir, storage_url)
    return run_dir
