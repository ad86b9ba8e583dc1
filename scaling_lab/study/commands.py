"""``scaling-lab run``, ``status`` and ``derive``."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from scaling_lab.files import check_output_folder
from scaling_lab.ranges import POSITIVE_INT, flag
from scaling_lab.report import write_report
from scaling_lab.study.config import BACKENDS, load_study
from scaling_lab.study.results import STATES
from scaling_lab.study.run_folder import check_before_resume, checked_run_dir
from scaling_lab.study.runner import open_results, run_study

BEST_COLUMNS = ("trial_id", "group", "seed", "config_id")


def _run(args: argparse.Namespace) -> int:
    overrides = list(args.set or [])
    if args.trials is not None:
        overrides.append(f"sampler.trials={args.trials}")
    config = load_study(args.study, profile=args.profile, overrides=overrides, run_dir=args.run_dir)
    check_output_folder(config.run_dir, "--run-dir" if args.run_dir else f"{args.study}: run_dir")
    check_output_folder(Path("reports") / config.name, "report folder")  # written at the end: checked before training
    check_before_resume(config.run_dir, config.storage_is_local, config.storage_url)
    frame = run_study(config, backend=args.backend, address=args.address, out=sys.stdout)
    print(f"results: {config.run_dir / 'results.parquet'} ({len(frame)} trials)")
    print(f"report: {write_report(config.run_dir)}")
    return 0


def _status(args: argparse.Namespace) -> int:
    run_dir = checked_run_dir(args.target, args.profile)
    info, frame = open_results(run_dir)
    counts = {state: int((frame["state"] == state).sum()) if not frame.empty else 0 for state in STATES}
    objective = info["objectives"][0]
    done = frame[frame["state"] == "complete"] if not frame.empty else frame
    best = (
        done.sort_values(objective["metric"], ascending=objective["direction"] == "minimize").head(args.top)
        if objective["metric"] in done.columns
        else done.head(0)
    )
    columns = [c for c in BEST_COLUMNS if c in best.columns] + [o["metric"] for o in info["objectives"] if o["metric"] in best.columns]
    best_rows = json.loads(best[columns].to_json(orient="records")) if not best.empty else []
    if args.json:
        print(json.dumps({**counts, "name": info["name"], "planned_trials": info["planned_trials"], "finished": info["finished"], "best_trials": best_rows}))
        return 0
    finished = sum(counts[s] for s in STATES if s != "running")
    print(f"{info['name']}: {finished}/{info['planned_trials']} trials done{' (finished)' if info['finished'] else ''}  [{run_dir}]")
    print("  " + ", ".join(f"{state} {counts[state]}" for state in STATES))
    if best_rows:
        print(f"best by {objective['metric']} ({objective['direction']}):")
        for row in best_rows:
            print("  " + "  ".join(f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}" for k, v in row.items()))
    return 0


def _derive(args: argparse.Namespace) -> int:
    from scaling_lab.errors import ScalingLabError
    from scaling_lab.laws.surface import fit_surface
    from scaling_lab.study.derive import derive_coefficients

    run_dir = checked_run_dir(args.target, args.profile)
    derivation = derive_coefficients(run_dir)
    print(derivation.to_text())
    try:
        info, frame = open_results(run_dir)
        print(fit_surface(info, frame, str(run_dir)).beside(derivation.coefficients, derivation.score))
    except ScalingLabError as exc:
        print(f"no response surface: {exc}")
    return 0


def add_commands(subparsers: argparse._SubParsersAction) -> None:
    run = subparsers.add_parser("run", help="run or resume a study (a studies/*.yaml file)")
    run.add_argument("study", help="study file, e.g. studies/quickstart.yaml")
    run.add_argument("--backend", choices=BACKENDS, help="override the study's backend")
    run.add_argument("--address", help="attach to a running Ray cluster (e.g. auto or 10.0.0.1:6379); needs --backend ray")
    run.add_argument("--set", action="append", metavar="KEY=VALUE", help="override a study key, e.g. --set task.epochs=1 (repeatable)")
    run.add_argument("--profile", help="apply one of the study's profiles, e.g. --profile cpu")
    run.add_argument("--trials", type=flag(POSITIVE_INT), help="number of configurations to sample (random, tpe, nsga2 samplers)")
    run.add_argument("--run-dir", help="run folder (default: the study's run_dir, or runs/<name>/; runs/<name>-<profile>/ with --profile)")
    run.set_defaults(func=_run)

    status = subparsers.add_parser("status", help="counts by state, planned total and best trials of a study")
    status.add_argument("target", help="study file or run folder")
    status.add_argument("--profile", help="the run folder of this profile of the study file (runs/<name>-<profile>)")
    status.add_argument("--json", action="store_true", help="print one JSON object (counts by state, planned_trials, finished, best_trials)")
    status.add_argument("--top", type=flag(POSITIVE_INT), default=5, help="how many best trials to list (default 5)")
    status.set_defaults(func=_status)

    derive = subparsers.add_parser("derive", help="the derived alpha, beta, gamma of a compound grid with measured FLOPs ratios")
    derive.add_argument("target", help="study file or run folder")
    derive.add_argument("--profile", help="the run folder of this profile of the study file (runs/<name>-<profile>)")
    derive.set_defaults(func=_derive)
