"""``scaling-lab recommend`` (the spec predicted best within a budget) and ``scaling-lab fidelity``
(would a cheap study have ranked the configurations as a full one did)."""

from __future__ import annotations

import argparse
import math
from pathlib import Path

from scaling_lab.errors import ScalingLabError
from scaling_lab.files import check_output_folder
from scaling_lab.laws.fidelity import RankAgreement, across_studies, within_study
from scaling_lab.laws.recommend import parse_budget, recommend, write_spec_file
from scaling_lab.study.run_folder import checked_run_dir
from scaling_lab.study.runner import open_results


def add_commands(subparsers: argparse._SubParsersAction) -> None:
    advise = subparsers.add_parser("recommend", help="the spec a study's scaling fits predict best within a FLOPs, params or latency budget")
    advise.add_argument("run", help="study file or run folder")
    advise.add_argument("--profile", help="the run folder of this profile of the study file (runs/<name>-<profile>)")
    budget = advise.add_mutually_exclusive_group(required=True)
    budget.add_argument("--flops", help="FLOPs budget (multiply-adds as fvcore counts them), e.g. 10G or 2.5e9")
    budget.add_argument("--params", help="parameter budget, e.g. 5M")
    budget.add_argument("--latency", help="batch-1 latency budget, e.g. 20ms (predicted from the study's measured latencies)")
    advise.add_argument("--out", type=Path, help="spec file to write (default <run folder>/recommended.yaml)")
    advise.set_defaults(func=recommend_command)

    fidelity = subparsers.add_parser("fidelity", help="rank agreement (Kendall tau) of early epochs with the end, or of a cheap study with a full one")
    fidelity.add_argument("run", help="study file or run folder (the cheap study when a second is given)")
    fidelity.add_argument("full", nargs="?", help="a second run folder or study file (the full study) to compare with")
    fidelity.add_argument("--profile", help="the run folder of this profile of the (first) study file")
    fidelity.set_defaults(func=fidelity_command)


def recommend_command(args: argparse.Namespace) -> int:
    kind, text = next((k, getattr(args, k)) for k in ("flops", "params", "latency") if getattr(args, k) is not None)
    budget = parse_budget(kind, text)
    run_dir = checked_run_dir(args.run, args.profile)
    out = args.out if args.out is not None else run_dir / "recommended.yaml"
    if out.is_dir():
        raise ScalingLabError(f"--out {out} is a folder; give the path of the spec file to write")
    check_output_folder(out.parent, "--out's folder")
    info, frame = open_results(run_dir)
    found = recommend(info, frame, str(run_dir), kind, budget)
    print(found.to_text())
    print(f"spec: {write_spec_file(found, out)} (scaling-lab train {out}, or base: {out} in a study)")
    return 0


def fidelity_command(args: argparse.Namespace) -> int:
    run_dir = checked_run_dir(args.run, args.profile)
    info, frame = open_results(run_dir)
    if args.full is None:
        for group, rows in within_study(info, frame, str(run_dir)).items():
            print(f"group {group or '(none)'}: each validation epoch's ranking against the final one")
            print(_table(rows))
        return 0
    full_dir = checked_run_dir(args.full, None)
    full_info, full_frame = open_results(full_dir)
    how, rows = across_studies((info, frame, str(run_dir)), (full_info, full_frame, str(full_dir)))
    print(f"A = {run_dir}, B = {full_dir}: {rows[0].configurations} shared configurations, matched {how}; A's rankings against B's final one")
    print(_table(rows))
    return 0


def _table(rows: list[RankAgreement]) -> str:
    lines = [f"  {'ranking':<12}{'n':>4}  {'Kendall tau [95 %]':<24}{'same winner':<13}{'winner agreement':<18}{'early winner final rank':<25}early vs final winner"]
    for row in rows:
        tau = "–" if math.isnan(row.tau) else f"{row.tau:+.2f} [{row.low:+.2f}, {row.high:+.2f}]"
        lines.append(
            f"  {row.label:<12}{row.configurations:>4}  {tau:<24}{'yes' if row.same_winner else 'no':<13}{row.winner_agreement:<18.0%}"
            f"{row.early_winner_final_rank:<25}{row.verdict}"
        )
    return "\n".join(lines)
