"""The one error type users see: bad input, reported as a sentence instead of a traceback."""

import errno
import os


class ScalingLabError(ValueError):
    """Bad input (a spec, a file, a key or a value), with a message that says what would be valid.

    The command line prints the message and exits with status 2.
    """


class SpecError(ScalingLabError):
    """A model spec that cannot be built: an unknown key, a wrong type or an invalid value."""


class MachineFault(ScalingLabError):
    """A fault of the machine rather than of the input or the configuration (no space left on a
    device): the command exits 2, and a trial it stopped is recorded as interrupted, so the next
    ``run`` runs it again."""


NO_SPACE_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT})
SQLITE_FULL = "database or disk is full"


def no_space_left(exc: BaseException, folder: object) -> MachineFault | None:
    """The ``MachineFault`` naming ``folder`` when ``exc``, or an exception it was raised from,
    says that no space is left (ENOSPC, a disk quota, SQLite's "database or disk is full");
    else None. Libraries wrap the OS error (SQLAlchemy, torch), so the whole chain is read."""
    seen: set[int] = set()
    stack: list[BaseException | None] = [exc]
    while stack:
        current = stack.pop()
        if current is None or id(current) in seen:
            continue
        seen.add(id(current))
        if isinstance(current, MachineFault):
            return current
        if (isinstance(current, OSError) and current.errno in NO_SPACE_ERRNOS) or SQLITE_FULL in str(current):
            detail = current.strerror if isinstance(current, OSError) and current.strerror else SQLITE_FULL
            filename = getattr(current, "filename", None)
            where = os.path.dirname(os.path.abspath(filename)) if isinstance(filename, str) else folder
            return MachineFault(
                f"{where}: no space left on the device ({detail}); free some space there and run the same command "
                "again: what was recorded is kept, and a trial this stopped runs again"
            )
        stack += [current.__cause__, current.__context__]
    return None
