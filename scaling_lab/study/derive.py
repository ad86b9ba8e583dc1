"""Step 1 of the EfficientNet method, read back: the best alpha, beta, gamma of the grid at
phi = 1 and the FLOPs each one really multiplies the base by, measured with fvcore."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from scaling_lab import stats
from scaling_lab.decisions import DecisionRule, decide
from scaling_lab.errors import ScalingLabError
from scaling_lab.spec import spec_from_dict
from scaling_lab.study.candidate import cost_counts
from scaling_lab.study.runner import open_results
from scaling_lab.study.search_space import SearchSpace
from scaling_lab.study.families import grid_runners_up
from scaling_lab.study.winner import WinnerRule, decide_winner, derive_group

COEFFICIENT_DIMENSIONS = {"alpha": "depth", "beta": "width", "gamma": "resolution"}


@dataclass(frozen=True)
class Derivation:
    group: str
    metric: str
    score: float
    seeds: int
    coefficients: dict[str, float]
    flops_ratios: dict[str, float]  # each coefficient alone, and "compound" for all three
    constraint: dict[str, Any] | None
    ranking: pd.DataFrame  # every grid configuration, best first (winner.rank_configurations)
    # the runners-up whose comparison with the winner is not "worse" (scaling_lab.decisions)
    contenders: tuple[dict[str, Any], ...] = ()
    method: str = ""  # how the verdicts were decided: method, level, margin

    @property
    def within_constraint(self) -> bool | None:
        if self.constraint is None:
            return None
        ratio = self.flops_ratios["compound"]
        low, high = self.constraint.get("min"), self.constraint.get("max")
        return (low is None or ratio >= low) and (high is None or ratio <= high)

    def to_text(self) -> str:
        lines = [f"best of group {self.group!r} by {self.metric}: {self.score:.4g} (mean of {self.seeds} seed(s))"]
        for name, value in self.coefficients.items():
            lines.append(f"  {name} = {value:.4f}  ({COEFFICIENT_DIMENSIONS[name]} alone: measured FLOPs x{self.flops_ratios[name]:.3f})")
        product = self.coefficients["alpha"] * self.coefficients["beta"] ** 2 * self.coefficients["gamma"] ** 2
        lines.append(f"  alpha·beta²·gamma² = {product:.3f}; measured FLOPs of the compound step x{self.flops_ratios['compound']:.3f}")
        if self.constraint is not None:
            bounds = f"[{self.constraint.get('min', '-')}, {self.constraint.get('max', '-')}]"
            verdict = "within" if self.within_constraint else "OUTSIDE"
            lines.append(f"  {verdict} the flops constraint {bounds}{' x the base' if self.constraint.get('relative') else ''}")
        incomplete = self.ranking[self.ranking["incomplete"]]
        if not incomplete.empty:
            lines.append(f"  {len(incomplete)} configuration(s) with fewer complete seeds than planned do not compete: {', '.join(incomplete['config_id'])}")
        lines.append(f"  {len(self.contenders)} runner(s)-up not shown to be worse than it (verdict unresolved or equivalent)")
        for candidate in self.contenders:
            coefficients = ", ".join(f"{name}={candidate[name]:g}" for name in COEFFICIENT_DIMENSIONS if candidate.get(name) is not None)
            lines.append(
                f"    {candidate['config_id']} ({coefficients}): {self.metric} {candidate['mean']:.4g}, difference {candidate['difference']:+.4g} "
                f"[{candidate['low']:+.4g}, {candidate['high']:+.4g}] at {candidate['level']:.1%}, {candidate['verdict']} ({candidate['seeds']})"
            )
        if self.method:
            lines.append(f"  {self.method}")
        return "\n".join(lines)


def derive_coefficients(run_dir: Path) -> Derivation:
    """The winner of the study's alpha/beta/gamma grid (``winner.decide_winner``, the rule the
    runner and the report use too), with measured FLOPs ratios."""
    info, frame = open_results(run_dir)
    if frame.empty:
        raise ScalingLabError(f"{run_dir}: the study has no trials yet; run it first")
    group = derive_group(info, frame)
    winner = decide_winner(frame, group, WinnerRule.from_info(info, group), str(run_dir))
    coefficients = {name: float(winner.values.get(name, 1.0)) for name in COEFFICIENT_DIMENSIONS}
    base = spec_from_dict(info["base_spec"])
    base_costs = cost_counts(base)
    scaling = SearchSpace(parameters=(), source=str(run_dir))
    ratios = {
        name: cost_counts(scaling.build_spec(base, {name: value, "phi": 1}), base_costs)["flops_ratio"]
        for name, value in coefficients.items()
    }
    ratios["compound"] = cost_counts(scaling.build_spec(base, {**coefficients, "phi": 1}), base_costs)["flops_ratio"]
    constraint = next(
        (c for g in info.get("groups", []) if g["name"] == group for c in g["constraints"] if c["cost"] == "flops"), None
    )
    found = grid_runners_up(info, frame)
    runners = [] if found is None or found[0] != winner.config_id else found[1]
    rule = DecisionRule.from_info(info)
    maximize = WinnerRule.from_info(info, group).direction == "maximize"
    decided = decide(frame, [(runner, winner.config_id) for runner in runners], winner.metric, rule, maximize)
    rows = stats.complete_trials(frame)
    params = rows.groupby("config_id")[[f"param.{name}" for name in COEFFICIENT_DIMENSIONS if f"param.{name}" in rows.columns]].first()
    contenders = tuple(
        {
            "config_id": runner, "mean": float(rows.loc[rows["config_id"] == runner, winner.metric].mean()), "difference": c.difference,
            "low": c.low, "high": c.high, "level": c.level, "verdict": c.verdict, "seeds": c.seeds_text(),
            **{name: params.loc[runner].get(f"param.{name}") for name in COEFFICIENT_DIMENSIONS},
        }
        for (runner, _), c in decided.items() if c.verdict in (stats.UNRESOLVED, stats.EQUIVALENT)
    )
    return Derivation(group, winner.metric, winner.score, winner.seeds, coefficients, ratios, constraint, winner.ranking, contenders, rule.describe())
