"""Writing files so that a reader never sees half of one: every file of a run folder, report,
checkpoint and cache goes through ``atomic_write`` (a temporary file in the same folder, then a
rename, which is atomic on POSIX file systems); tables are read from one snapshot
(``read_parquet``)."""

from __future__ import annotations

import argparse
import io
import os
import tempfile
from pathlib import Path
from typing import Callable

import pandas as pd

from scaling_lab.errors import ScalingLabError, no_space_left


def atomic_write(path: Path, write: Callable[[str], None], mode: int = 0o644) -> None:
    """Call ``write(temporary_path)`` and rename the result over ``path``; on any error the old
    file (if any) is left as it was and the temporary file is removed. A full disk is a
    ``MachineFault`` naming the folder."""
    path = Path(path)
    temporary = None
    try:
        handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
        os.close(handle)
        write(temporary)
        os.chmod(temporary, mode)  # mkstemp makes it private; these files are for everyone
        os.replace(temporary, path)
    except Exception as exc:
        fault = no_space_left(exc, path.parent)
        if fault is None:
            raise
        raise fault from exc
    finally:
        if temporary is not None and os.path.exists(temporary):
            os.unlink(temporary)


def atomic_write_text(path: Path, text: str) -> None:
    atomic_write(path, lambda temporary: Path(temporary).write_text(text, encoding="utf-8"))


def folder_argument(text: str) -> Path:
    """An argparse ``type=`` for a folder flag: an empty value is refused (it would silently mean
    the current folder; give ``.`` for that)."""
    if not text.strip():
        raise argparse.ArgumentTypeError("an empty path is not a folder; give a folder ('.' for the current one)")
    return Path(text)


def check_output_folder(path: Path, what: str) -> Path:
    """Raise ``ScalingLabError`` unless ``path`` is (or can be created as) a folder this process
    can write, checked by writing a probe file (permission bits alone mislead root and read-only
    mounts), and each name to be created fits the file system's limit. Nothing is created.
    ``what`` names where the path came from (``--run-dir``)."""
    path = Path(path).expanduser()
    if path.exists() and not path.is_dir():
        raise ScalingLabError(f"{what} {path}: is a file, not a folder; give a folder (it is created when missing)")
    existing, missing = path, []
    while not existing.exists():
        existing, missing = existing.parent, [existing.name, *missing]
    if not existing.is_dir():
        raise ScalingLabError(f"{what} {path}: {existing} is a file, so the folder cannot be created there; give another folder")
    limit = os.pathconf(existing, "PC_NAME_MAX")
    too_long = next((name for name in missing if len(os.fsencode(name)) > limit), None)
    if too_long is not None:
        raise ScalingLabError(
            f"{what} {path}: the name {too_long[:40]}... is {len(os.fsencode(too_long))} bytes, over the file system's limit of "
            f"{limit} bytes per name; give a shorter study name or another folder"
        )
    try:
        handle, probe = tempfile.mkstemp(dir=existing, prefix=".scaling-lab-write-check-")
        os.close(handle)
        os.unlink(probe)
    except OSError as exc:
        raise ScalingLabError(f"{what} {path}: cannot be written ({exc.strerror or exc}); give a folder you can write") from None
    return path


def read_parquet(path: Path) -> pd.DataFrame:
    """A parquet table read from one snapshot of the file: its bytes are read at once, so a table
    replaced (atomically) while it is read is never seen half old, half new."""
    return pd.read_parquet(io.BytesIO(Path(path).read_bytes()))
