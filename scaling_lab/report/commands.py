"""The ``report`` subcommand."""

from __future__ import annotations

import argparse

from scaling_lab.files import check_output_folder, folder_argument
from scaling_lab.report import write_report
from scaling_lab.study.run_folder import checked_run_dir


def add_commands(subparsers: argparse._SubParsersAction) -> None:
    report = subparsers.add_parser("report", help="write a study's HTML report (Pareto fronts, ablations, scaling, paper comparison)")
    report.add_argument("study", help="a study YAML (its run folder is runs/<name>, or runs/<name>-<profile>) or a run folder")
    report.add_argument("--profile", help="the run folder of this profile of the study file (runs/<name>-<profile>)")
    report.add_argument("--out", type=folder_argument, help="folder for the report (default reports/<run folder name>, or <run folder>/report outside runs/)")
    report.add_argument("--no-png", action="store_true", help="skip the PNG figures (they need kaleido and a Chromium)")
    report.set_defaults(func=report_command)


def report_command(args: argparse.Namespace) -> int:
    if args.out is not None:
        check_output_folder(args.out, "--out")
    index = write_report(checked_run_dir(args.study, args.profile), args.out, png=not args.no_png)
    print(index)
    return 0
