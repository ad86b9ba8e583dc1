"""The ``scaling-lab`` command line. Its output formats are a contract: other tools call it.

Each area of the package contributes its subcommands through an ``add_commands(subparsers)``
function listed in ``COMMAND_MODULES``; a subcommand sets ``func`` to a function of the parsed
arguments returning the exit status. Bad input (``ScalingLabError``) prints one paragraph and
exits with status 2, never a traceback.
"""

from __future__ import annotations

import argparse
import importlib
import sys

from scaling_lab.errors import ScalingLabError

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


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args) or 0
    except ScalingLabError as exc:
        print(f"scaling-lab {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"scaling-lab {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
