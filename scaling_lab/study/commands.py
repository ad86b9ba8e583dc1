"""``scaling-lab status`` and ``derive`` (``run`` writes a report too, so it lives with the report
commands: ``scaling_lab.report.commands``)."""

from __future__ import annotations

import argparse
import json

from scaling_lab.ranges import POSITIVE_INT, flag
from scaling_lab.schema import FINISHED_STATES, TRIAL_STATES
from scaling_lab.stats import complete_trials
from scaling_lab.study.run_folder import checked_run_dir
from scaling_lab.study.runner import open_results

BEST_COLUMNS = ("trial_id", "group", "seed", "config_id")


def _status(args: argparse.Namespace) -> int:
    run_dir = checked_run_dir(args.target, args.profile)
    info, frame = open_results(run_dir)
    counts = {state: int((frame["state"] == state).sum()) if not frame.empty else 0 for state in TRIAL_STATES}
    objective = info["objectives"][0]
    done = complete_trials(frame)
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
    finished = sum(counts[s] for s in FINISHED_STATES)
    print(f"{info['name']}: {finished}/{info['planned_trials']} trials done{' (finished)' if info['finished'] else ''}  [{run_dir}]")
    print("  " + ", ".join(f"{state} {counts[state]}" for state in TRIAL_STATES))
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
