"""Writing files so that a reader never sees half of one: every file of a run folder, report,
checkpoint and cache goes through ``atomic_write`` (a temporary file in the same folder, then a
rename, which is atomic on POSIX file systems)."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Callable


def atomic_write(path: Path, write: Callable[[str], None], mode: int = 0o644) -> None:
    """Call ``write(temporary_path)`` and rename the result over ``path``; on any error the old
    file (if any) is left as it was and the temporary file is removed."""
    path = Path(path)
    handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(handle)
    try:
        write(temporary)
        os.chmod(temporary, mode)  # mkstemp makes it private; these files are for everyone
        os.replace(temporary, path)
    finally:
        if os.path.exists(temporary):
            os.unlink(temporary)


def atomic_write_text(path: Path, text: str) -> None:
    atomic_write(path, lambda temporary: Path(temporary).write_text(text, encoding="utf-8"))
