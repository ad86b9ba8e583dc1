"""How a study decides its comparisons, so that its verdicts hold although an adaptive study
looks at them after every round of seeds.

The guarantee: over a whole study, the chance that any verdict of one report section is wrong
(``better``/``worse`` with no such difference, ``equivalent`` with a difference beyond the
margin) is at most ``1 - level`` (5 %), however the study stopped.

- **Looks (alpha spending).** Fixed repeats look once, with the whole ``alpha = 1 - level``.
  Adaptive repeats (``repeats: {min, max, until: resolved}``) look after every round, at
  ``min, min + 1, ..., max`` seeds; the look at ``n`` seeds spends ``alpha * n / sum(min..max)``
  (more to later looks, which hold more seeds). The spent shares add up to alpha, so by the union
  bound the chance that any planned look's interval misses is at most alpha whatever the study
  does after a look: stop, or add a seed to the comparisons still open.
- **Family (Bonferroni).** The ``m`` comparisons of one report section share that alpha:
  each interval is at ``1 - alpha_n / m``. Chosen over Holm because the verdict is read from the
  interval shown (better, worse, equivalent alike): Bonferroni intervals hold simultaneously, so
  every verdict of a section agrees with its interval and all hold together; Holm's step-down
  decisions have no intervals that agree with them. With the 1 to 5 comparisons of a section the
  price is small (``tests/test_adaptive.py`` and ``benchmarks/adaptive_repeats.py`` measure
  the error rates and the trials spent).
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any, Iterable, Mapping, Sequence

import pandas as pd

from scaling_lab import image_replicates, stats

UNTIL = ("resolved",)
FALLBACK_METRICS = ("AP", "top1")


def verdict_metric(objectives: Sequence[Mapping[str, Any]], columns: Iterable[str]) -> tuple[str, bool] | None:
    """The metric a study's comparisons are decided on (the report's and the adaptive rounds'
    alike) and whether higher is better: the first maximized objective the results have, else
    AP or top-1; else the first objective with its direction; None when the results have none."""
    present = set(columns)
    for metric in [o["metric"] for o in objectives if o.get("direction") == "maximize"] + list(FALLBACK_METRICS):
        if metric in present:
            return str(metric), True
    if objectives and objectives[0].get("metric") in present:
        return str(objectives[0]["metric"]), objectives[0].get("direction", "maximize") == "maximize"
    return None


@dataclass(frozen=True)
class DecisionRule:
    """The level, the equivalence margin (in the metric's own unit: AP 0.01 is one point) and
    the planned looks (``min_seeds`` to ``max_seeds``; equal for fixed repeats)."""

    level: float = stats.LEVEL
    margin: float = 0.0
    min_seeds: int = 1
    max_seeds: int = 1

    @classmethod
    def from_info(cls, info: Mapping[str, Any]) -> "DecisionRule":
        """The rule a run folder's ``study.json`` records (``repeats``, else its ``seeds``)."""
        repeats = info.get("repeats")
        if isinstance(repeats, Mapping) and "min" in repeats:
            return cls(margin=float(repeats.get("margin") or 0.0), min_seeds=int(repeats["min"]), max_seeds=int(repeats["max"]))
        seeds = len(info.get("seeds") or []) or 1
        return cls(min_seeds=seeds, max_seeds=seeds)

    @property
    def adaptive(self) -> bool:
        return self.max_seeds > self.min_seeds

    def spent(self, seeds: int) -> float:
        """The share of alpha spent at the look with ``seeds`` seeds (clamped to the planned looks)."""
        looks = range(self.min_seeds, self.max_seeds + 1)
        look = min(max(seeds, self.min_seeds), self.max_seeds)
        return look / sum(looks)

    def alpha(self, seeds: int, family_size: int) -> float:
        """The error rate of one comparison's interval at ``seeds`` seeds in a family of ``family_size``."""
        return (1 - self.level) * self.spent(seeds) / max(family_size, 1)

    def describe(self, factor: float = 1.0, unit: str = "") -> str:
        """One sentence naming the method, the level and the margin (for reports and ``derive``)."""
        looks = (
            f"alpha spent over the looks at {self.min_seeds} to {self.max_seeds} seeds in proportion to their seeds"
            if self.adaptive else f"one look at {self.min_seeds} seed(s)"
        )
        margin = f"equivalent: the whole interval within ±{self.margin * factor:g}{unit}" if self.margin > 0 else "no equivalence margin set"
        return (
            f"Verdicts hold at {self.level:.0%} family-wise per section: Bonferroni over the section's comparisons and {looks} "
            f"(each interval's own level is shown); better/worse: the interval excludes 0; {margin}; else unresolved."
        )


def decide(
    results: pd.DataFrame,
    pairs: Sequence[tuple[str, str]],
    metric: str,
    rule: DecisionRule,
    maximize: bool = True,
    combinations: Mapping[str, Sequence[tuple[str, float]]] | None = None,
) -> dict[tuple[str, str], stats.Comparison]:
    """Each ``(a, b)`` pair of one family (report section) decided by ``rule``: ``a - b``. An id
    of ``combinations`` stands for the weighted sum of its configurations (e.g. a rule's metric
    interpolated at compound's FLOPs), per seed (``stats.combine``); when they share no seed the
    comparison is unresolved and its note says so."""
    done = stats.complete_trials(results).dropna(subset=[metric])
    combinations = combinations or {}
    wanted = {member for pair in pairs for c in pair for member, _ in combinations.get(str(c), ((str(c), 1.0),))}
    pairable = "seed" in done.columns
    groups = [(str(cid), trials) for cid, trials in done.groupby("config_id", sort=False) if str(cid) in wanted]
    values = {cid: stats.seed_values(trials, metric) for cid, trials in groups}
    images = {cid: found for cid, trials in groups if (found := image_replicates.image_replicates(trials, metric)) is not None}
    empty = pd.Series(dtype=float)
    unseeded = {}  # combinations whose configurations all have trials but no seed in common
    for cid, parts in combinations.items():
        members = [values.get(member, empty) for member, _ in parts]
        values[cid] = stats.combine([(member, weight) for member, (_, weight) in zip(members, parts)]) if pairable else empty
        if pairable and values[cid].empty and all(not member.empty for member in members):
            unseeded[cid] = f"the configurations combined into {cid} ({', '.join(m for m, _ in parts)}) have no seed in common"
        found = image_replicates.combine_images([(images.get(member), weight) for member, weight in parts])
        if found is not None:
            images[cid] = found
    decided = decide_values(values, pairs, rule, maximize, stats.pooled_seed_noise(done, metric), pairable, images)
    for pair, found in decided.items():
        if any(side in unseeded for side in pair) and math.isnan(found.difference):  # say why each side has no values
            reasons = [unseeded.get(side) or f"{side} has no complete trial" for side in pair if side in unseeded or values.get(side, empty).empty]
            decided[pair] = dataclasses.replace(found, note="; ".join(reasons))
    return decided


def decide_values(
    values: Mapping[str, pd.Series],
    pairs: Sequence[tuple[str, str]],
    rule: DecisionRule,
    maximize: bool = True,
    pooled: stats.SeedNoise | None = None,
    pairable: bool = True,
    images: Mapping[str, image_replicates.ImageReplicates] | None = None,
) -> dict[tuple[str, str], stats.Comparison]:
    """``decide`` on per-configuration values indexed by seed (a missing configuration has none)
    and the bootstrap replicates over images of one-trial configurations."""
    empty = pd.Series(dtype=float)
    decided = {}
    for a, b in pairs:
        left, right = values.get(str(a), empty), values.get(str(b), empty)
        sides = ((images or {}).get(str(a)), (images or {}).get(str(b)))
        found = stats.compare(left, right, rule.alpha(rule.min_seeds, len(pairs)), rule.margin, maximize, pooled, pairable, sides)
        if rule.spent(found.n) != rule.spent(rule.min_seeds):
            found = stats.compare(left, right, rule.alpha(found.n, len(pairs)), rule.margin, maximize, pooled, pairable, sides)
        decided[(str(a), str(b))] = found
    return decided
