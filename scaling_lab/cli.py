"""The ``scaling-lab`` command line. Its output formats are a contract: other tools call it.

Each area of the package contributes its subcommands through an ``add_commands(subparsers)``
function listed in ``COMMAND_MODULES``; a subcommand sets ``func`` to a function of the parsed
arguments returning the exit status. Bad input (``ScalingLabError``) and a full disk print one
paragraph and exit with status 2, never a traceback; SIGTERM stops a command like Ctrl-C.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import signal
import sys
import threading
from typing import Iterator

from scaling_lab.errors import ScalingLabError, no_space_left

COMMAND_MODULES = (
    "scaling_lab.commands", "scaling_lab.train.commands", "scaling_lab.study.commands", "scaling_lab.report.commands", "scaling_lab.laws.commands",
)


def build_parser() -> argparse.ArgumentParser:
    from scaling_lab import __version__

    parser = argparse.ArgumentParser(
        prog="scaling-lab",
        description="Architecture search and model-scaling research on EfficientNet/EfficientDet-style detectors.",
    )
    parser.add_argument("--version", action="version", version=f"scaling-lab {__version__}")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    subparsers.required = True
    for name in COMMAND_MODULES:
        importlib.import_module(name).add_commands(subparsers)
    return parser


class Terminated(KeyboardInterrupt):
    """SIGTERM (``kill``, a scheduler ending a job): stops a command as Ctrl-C does, so a running
    trial is recorded as interrupted and runs again on the next ``run``."""


def _terminate(signum: int, frame: object) -> None:
    raise Terminated()


@contextlib.contextmanager
def sigterm_as_interrupt() -> Iterator[None]:
    """Handle SIGTERM like Ctrl-C while a command runs (only the main thread can handle signals)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGTERM, _terminate)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        with sigterm_as_interrupt():
            return args.func(args) or 0
    except ScalingLabError as exc:
        print(f"scaling-lab {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except Terminated:
        print(f"scaling-lab {args.command}: terminated (SIGTERM); run the same command again to go on", file=sys.stderr)
        return 128 + signal.SIGTERM
    except KeyboardInterrupt:
        print(f"scaling-lab {args.command}: interrupted", file=sys.stderr)
        return 130
    except Exception as exc:
        fault = no_space_left(exc, "the disk")
        if fault is None:
            raise
        print(f"scaling-lab {args.command}: error: {fault}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
