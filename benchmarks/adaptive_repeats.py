"""Adaptive against fixed repeats, in simulated studies with known effects (the study's own
planner and decision rule: ``scaling_lab.study.adaptive.simulate``).

    PYTHONPATH=. python benchmarks/adaptive_repeats.py [--studies 2000]

Four configurations, each compared with the first (like EfficientDet Table 5), seed noise sd 1
with half its variance shared by all configurations on a seed, equivalence margin 1 sd. Prints,
per scenario and repeats rule, the mean trials per study, the share of studies with any wrong
verdict, and the shares of comparisons resolved and of true differences called in their
direction (the table in docs/adaptive-repeats.md).
"""

from __future__ import annotations

import argparse

from scaling_lab.decisions import DecisionRule
from scaling_lab.study.adaptive import simulate

SCENARIOS = {"no difference": [0, 0, 0, 0], "all three 2 sd better": [0, 2, 2, 2], "one 2 sd better, one 2 sd worse, one equal": [0, 2, -2, 0]}
RULES = {
    "fixed 3 seeds": DecisionRule(margin=1.0, min_seeds=3, max_seeds=3),
    "fixed 12 seeds": DecisionRule(margin=1.0, min_seeds=12, max_seeds=12),
    "adaptive 3 to 12": DecisionRule(margin=1.0, min_seeds=3, max_seeds=12),
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--studies", type=int, default=2000)
    studies = parser.parse_args().studies
    print(f"{studies} simulated studies per row")
    print("| true effects | repeats | trials per study | studies with a wrong verdict | comparisons resolved | true differences called |")
    print("|---|---|---|---|---|---|")
    for scenario, effects in SCENARIOS.items():
        for name, rule in RULES.items():
            found = simulate(effects, rule, studies, seed=7)
            called = "–" if found.correct_difference != found.correct_difference else f"{found.correct_difference:.1%}"
            print(f"| {scenario} | {name} | {found.trials:.1f} | {found.false_verdict:.1%} | {found.resolved:.1%} | {called} |", flush=True)


if __name__ == "__main__":
    main()
