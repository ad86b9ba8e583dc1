"""``scaling-lab report``, and ``run``: it runs a study, then writes its report, so it sits above
both layers (the study layer never imports the report layer)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from scaling_lab.errors import ScalingLabError, no_space_left
from scaling_lab.files import atomic_write_text, check_output_folder, folder_argument
from scaling_lab.ranges import POSITIVE_INT, flag
from scaling_lab.report import load_run, report_dir_for, write_report
from scaling_lab.report.findings import refresh_document
from scaling_lab.study.study_files import BACKENDS, load_study
from scaling_lab.study.run_folder import check_before_resume, checked_run_dir
from scaling_lab.study.runner import run_study


def add_commands(subparsers: argparse._SubParsersAction) -> None:
    run = subparsers.add_parser("run", help="run or resume a study (a studies/*.yaml file)")
    run.add_argument("study", help="study file, e.g. studies/quickstart.yaml")
    run.add_argument("--backend", choices=BACKENDS, help="override the study's backend")
    run.add_argument("--address", help="attach to a running Ray cluster (e.g. auto or 10.0.0.1:6379); needs --backend ray")
    run.add_argument("--set", action="append", metavar="KEY=VALUE", help="override a study key, e.g. --set task.epochs=1 (repeatable)")
    run.add_argument("--profile", help="apply one of the study's profiles, e.g. --profile cpu")
    run.add_argument("--trials", type=flag(POSITIVE_INT), help="number of configurations to sample (random, tpe, nsga2 samplers)")
    run.add_argument("--run-dir", type=folder_argument, help="run folder (default: the study's run_dir, or runs/<name>/; runs/<name>-<profile>/ with --profile)")
    run.add_argument(
        "--retry-failed", action="store_true",
        help="run the failed trials again (each from its checkpoint); trials interrupted by the machine always run again",
    )
    run.set_defaults(func=_run)

    report = subparsers.add_parser("report", help="write a study's HTML report (Pareto fronts, ablations, scaling, paper comparison)")
    report.add_argument("study", help="a study YAML (its run folder is runs/<name>, or runs/<name>-<profile>) or a run folder")
    report.add_argument("--profile", help="the run folder of this profile of the study file (runs/<name>-<profile>)")
    report.add_argument("--out", type=folder_argument, help="folder for the report (default reports/<run folder name>, or <run folder>/report outside runs/)")
    report.add_argument("--no-png", action="store_true", help="skip the PNG figures (they need kaleido and a Chromium)")
    report.add_argument(
        "--document", type=Path, metavar="PAGE",
        help="instead of a report, re-derive the generated blocks (<!-- scaling-lab: NAME -->) of a Markdown page, e.g. docs/proxy-findings.md, from this run",
    )
    report.set_defaults(func=report_command)


def report_command(args: argparse.Namespace) -> int:
    if args.document is not None:
        if not args.document.is_file():
            raise ScalingLabError(f"--document {args.document}: no such file; give a Markdown page with generated blocks")
        run = load_run(checked_run_dir(args.study, args.profile))
        atomic_write_text(args.document, refresh_document(args.document.read_text(encoding="utf-8"), run, str(args.document)))
        print(args.document)
        return 0
    if args.out is not None:
        check_output_folder(args.out, "--out")
    index = write_report(checked_run_dir(args.study, args.profile), args.out, png=not args.no_png)
    print(index)
    return 0


def _run(args: argparse.Namespace) -> int:
    overrides = list(args.set or [])
    if args.trials is not None:
        overrides.append(f"sampler.trials={args.trials}")
    config = load_study(args.study, profile=args.profile, overrides=overrides, run_dir=args.run_dir)
    check_output_folder(config.run_dir, "--run-dir" if args.run_dir else f"{args.study}: run_dir")
    check_output_folder(config.run_dir / "checkpoints", "checkpoints folder")  # trials write there: checked before training
    check_output_folder(report_dir_for(config.run_dir), "report folder")  # written at the end: checked before training
    check_before_resume(config.run_dir, config.storage_is_local, config.storage_url)
    try:
        frame = run_study(config, backend=args.backend, address=args.address, out=sys.stdout, retry_failed=args.retry_failed)
    except Exception as exc:
        fault = no_space_left(exc, config.run_dir)  # e.g. SQLite's "database or disk is full" names no folder
        if fault is None or fault is exc:
            raise
        raise fault from exc
    print(f"results: {config.run_dir / 'results.parquet'} ({len(frame)} trials)")
    print(f"report: {write_report(config.run_dir)}")
    return 0
