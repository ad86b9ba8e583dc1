"""Adaptive repeats: after each round of seeds the study looks at the comparisons its report
makes (``families``) and plans one more seed only for the configurations of comparisons that
are still ``unresolved``; it stops when every comparison has a verdict, when the open ones are
at ``max`` seeds, or when the budget is spent, and says which. The verdicts stay valid although
the study looks after every round: ``scaling_lab.decisions`` spends its error rate over the
planned looks.

``simulate`` runs the same planner on a trial function with known effects and noise, many
studies in seconds: ``tests/test_adaptive.py`` and ``benchmarks/adaptive_repeats.py``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping, Sequence

import numpy as np
import pandas as pd

from scaling_lab import stats
from scaling_lab.decisions import DecisionRule, decide, decide_values
from scaling_lab.study.config import Repeats
from scaling_lab.study.families import comparison_families

RESOLVED, AT_MAX, BUDGET = "resolved", "max", "budget"
STOP_REASONS = {
    RESOLVED: "every comparison has a verdict",
    AT_MAX: "the comparisons still open are at the maximum seeds",
    BUDGET: "the budget is spent",
}


def rule_for(repeats: Repeats) -> DecisionRule:
    return DecisionRule(margin=repeats.margin, min_seeds=repeats.min, max_seeds=repeats.max)


@dataclass(frozen=True)
class Round:
    """What one look decided: the next seed of each configuration to run again (empty when the
    study stops), why it stops, and how many comparisons are open of how many."""

    seeds: dict[str, int]
    stop: str | None
    open: int
    comparisons: int

    def describe(self) -> str:
        if self.stop is None:
            return f"{self.open} of {self.comparisons} comparison(s) still open: one more seed for {len(self.seeds)} configuration(s)"
        return f"adaptive repeats stopped: {STOP_REASONS[self.stop]} ({self.comparisons - self.open} of {self.comparisons} comparison(s) resolved)"


def _grow(
    decided: Mapping[tuple[str, str], stats.Comparison],
    planned: Mapping[str, int],
    max_seeds: int,
    combinations: Mapping[str, Sequence[tuple[str, float]]] | None = None,
) -> tuple[int, dict[str, int]]:
    """The open comparisons' count and their configurations still below ``max_seeds`` -> next
    seed (a combination's configurations for a combination, e.g. an interpolated rule)."""
    open_pairs = [pair for pair, found in decided.items() if found.verdict == stats.UNRESOLVED]
    members = [member for pair in open_pairs for cid in pair for member, _ in (combinations or {}).get(cid, ((cid, 1.0),))]
    grow = {cid: planned.get(cid, 0) for cid in members if planned.get(cid, 0) < max_seeds}
    return len(open_pairs), grow


def spent(frame: pd.DataFrame) -> tuple[int, float]:
    """Trials with an outcome and their hours of compute (the sum of trial wall times)."""
    if frame.empty:
        return 0, 0.0
    finished = frame[frame["state"] != "running"] if "state" in frame.columns else frame
    hours = float(finished["wall_time_s"].sum()) / 3600 if "wall_time_s" in finished.columns else 0.0
    return len(finished), hours


def plan_round(info: Mapping[str, Any], frame: pd.DataFrame, repeats: Repeats, metric: str, maximize: bool = True) -> Round:
    """The next round of an adaptive study whose planned trials have all finished (``frame``)."""
    rule = rule_for(repeats)
    decided: dict[tuple[str, str], stats.Comparison] = {}
    combinations: dict[str, tuple[tuple[str, float], ...]] = {}
    for family in comparison_families(info, frame).values():
        decided.update(decide(frame, family.pairs, metric, rule, maximize, family.combinations))
        combinations.update(family.combinations)
    planned = (frame.dropna(subset=["seed"]).groupby("config_id")["seed"].max().astype(int) + 1).to_dict() if not frame.empty else {}
    open_count, grow = _grow(decided, {str(k): v for k, v in planned.items()}, repeats.max, combinations)
    trials, hours = spent(frame)
    if (repeats.budget_trials is not None and trials + len(grow) > repeats.budget_trials) or (repeats.budget_hours is not None and hours >= repeats.budget_hours):
        stop = BUDGET if grow else (RESOLVED if not open_count else AT_MAX)
    else:
        stop = None if grow else (RESOLVED if not open_count else AT_MAX)
    return Round({} if stop else grow, stop, open_count, len(decided))


# --- simulation ----------------------------------------------------------------------------


@dataclass(frozen=True)
class Simulated:
    """Outcomes of many simulated studies of one family: each configuration against ``c0``."""

    studies: int
    trials: float  # mean trials per study
    false_verdict: float  # share of studies with any wrong verdict: better/worse against the true sign, equivalent beyond the margin
    resolved: float  # share of comparisons with a verdict
    correct_difference: float  # share of comparisons with a true difference called in its direction
    equivalent: float  # share of comparisons called equivalent


def simulate(
    effects: Sequence[float],
    rule: DecisionRule,
    studies: int,
    seed: int = 0,
    sd: float = 1.0,
    shared: float = 0.5,
) -> Simulated:
    """``studies`` studies of configurations ``c0, c1, ...`` with true means ``effects`` and seed
    noise of sd ``sd`` (the share ``shared`` of its variance common to all configurations on one
    seed, as one seed's data order and initialisation are), each ``c_i`` compared with ``c0``;
    adaptive when ``rule.max_seeds > rule.min_seeds`` (planned by the study's own ``_grow``)."""
    rng = np.random.default_rng(seed)
    names = [f"c{i}" for i in range(len(effects))]
    pairs = [(name, names[0]) for name in names[1:]]
    truth = {pair: effects[int(pair[0][1:])] - effects[0] for pair in pairs}
    trials, false_studies, resolved, correct, equivalent = 0, 0, 0, 0, 0
    for _ in range(studies):
        common = rng.normal(0, sd * np.sqrt(shared), (rule.max_seeds, 1))
        own = rng.normal(0, sd * np.sqrt(1 - shared), (rule.max_seeds, len(effects)))
        table = np.asarray(effects)[None, :] + common + own
        planned = {name: rule.min_seeds for name in names}
        while True:
            values = {name: pd.Series(table[: planned[name], i]) for i, name in enumerate(names)}
            pooled = stats.pool(v.to_numpy() for v in values.values())
            decided = decide_values(values, pairs, rule, pooled=pooled)
            _, grow = _grow(decided, planned, rule.max_seeds)
            if not grow:
                break
            for name in grow:
                planned[name] += 1
        trials += sum(planned.values())
        wrong = False
        for pair, found in decided.items():
            resolved += found.verdict != stats.UNRESOLVED
            equivalent += found.verdict == stats.EQUIVALENT
            sign = {stats.BETTER: 1, stats.WORSE: -1}.get(found.verdict)
            if (sign is not None and np.sign(truth[pair]) != sign) or (found.verdict == stats.EQUIVALENT and abs(truth[pair]) >= rule.margin):
                wrong = True
            correct += sign is not None and truth[pair] != 0 and np.sign(truth[pair]) == sign
        false_studies += wrong
    comparisons = studies * len(pairs)
    differing = studies * sum(1 for pair in pairs if truth[pair] != 0)
    return Simulated(studies, trials / studies, false_studies / studies, resolved / comparisons, correct / differing if differing else float("nan"), equivalent / comparisons)
