"""Uncertainty of the numbers a study reports: percentile bootstrap intervals, mean/sd/95 %
interval over seeds, and the difference of two configurations with its interval and a verdict.

Pure functions over numbers and the results table (columns ``config_id``, ``seed``, ``state``,
the metric and, per trial, ``<metric>_ci_low``/``<metric>_ci_high`` from the bootstrap over
validation images). How the two sources of noise are used:

- A configuration with two or more seeds: a Student-t interval of the mean over seeds.
- A configuration with one seed: its trial's bootstrap interval over validation images.
- A comparison of two configurations that share two or more seeds: the paired difference by
  seed (same seed, same data order), a Student-t interval over the shared seeds.
- Otherwise: the difference of the means with the two standard errors combined (Welch), a
  one-seed side contributing its bootstrap standard error.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import lru_cache
from statistics import NormalDist
from typing import Sequence

import numpy as np
import pandas as pd

LEVEL = 0.95
BETTER, WORSE, WITHIN_NOISE, NO_INTERVAL = "better", "worse", "within noise", "no interval"
Z_95 = NormalDist().inv_cdf(0.975)


def percentile_interval(replicates: Sequence[float] | np.ndarray, level: float = LEVEL) -> tuple[float, float]:
    """The central ``level`` percentile interval of bootstrap replicates (NaN when none)."""
    values = np.asarray(replicates, dtype=float)
    values = values[np.isfinite(values)]
    if values.size == 0:
        return math.nan, math.nan
    tail = (1 - level) / 2 * 100
    low, high = np.percentile(values, [tail, 100 - tail])
    return float(low), float(high)


def _student_t_cdf(x: float, df: float) -> float:
    """P(T <= x) for x >= 0 by Simpson integration of the density (no scipy dependency)."""
    log_norm = math.lgamma((df + 1) / 2) - math.lgamma(df / 2) - 0.5 * math.log(df * math.pi)
    grid = np.linspace(0.0, x, 4001)
    density = np.exp(log_norm - (df + 1) / 2 * np.log1p(grid**2 / df))
    step = grid[1] - grid[0] if x > 0 else 0.0
    integral = step / 3 * (density[0] + density[-1] + 4 * density[1:-1:2].sum() + 2 * density[2:-1:2].sum())
    return 0.5 + float(integral)


@lru_cache(maxsize=256)
def t_quantile(df: float, level: float = LEVEL) -> float:
    """The two-sided ``level`` critical value of Student's t with ``df`` degrees of freedom."""
    if df <= 0 or math.isnan(df):
        return math.nan
    if math.isinf(df) or df > 1e6:
        return NormalDist().inv_cdf(0.5 + level / 2)
    target = 0.5 + level / 2
    low, high = 0.0, 1.0
    while _student_t_cdf(high, df) < target:
        low, high = high, high * 2
    for _ in range(60):
        middle = (low + high) / 2
        low, high = (middle, high) if _student_t_cdf(middle, df) < target else (low, middle)
    return (low + high) / 2


@dataclass(frozen=True)
class Estimate:
    """A configuration's metric: mean over ``n`` seeds, sd, standard error and 95 % interval."""

    mean: float
    sd: float
    n: int
    se: float
    df: float  # degrees of freedom of ``se`` (inf for a bootstrap standard error)
    low: float
    high: float
    source: str  # "seeds", "bootstrap" or "none"


def estimate(values: Sequence[float], bootstrap: tuple[float, float] | None = None) -> Estimate:
    """Mean, sd and 95 % interval over seeds; with one seed, the bootstrap interval if given."""
    data = np.asarray([v for v in values if v is not None and np.isfinite(v)], dtype=float)
    n = int(data.size)
    if n == 0:
        return Estimate(math.nan, math.nan, 0, math.nan, math.nan, math.nan, math.nan, "none")
    mean = float(data.mean())
    if n >= 2:
        sd = float(data.std(ddof=1))
        se = sd / math.sqrt(n)
        half = t_quantile(n - 1) * se
        return Estimate(mean, sd, n, se, n - 1, mean - half, mean + half, "seeds")
    if bootstrap is not None and all(v is not None and np.isfinite(v) for v in bootstrap):
        low, high = map(float, bootstrap)
        return Estimate(mean, math.nan, 1, (high - low) / (2 * Z_95), math.inf, low, high, "bootstrap")
    return Estimate(mean, math.nan, 1, math.nan, math.nan, math.nan, math.nan, "none")


@dataclass(frozen=True)
class Comparison:
    """``a - b`` of a metric with its 95 % interval and the verdict for ``a`` against ``b``."""

    difference: float
    low: float
    high: float
    paired: bool
    n: int  # shared seeds when paired, else the smaller side's seed count
    verdict: str

    def text(self, factor: float = 1.0, digits: int = 2) -> str:
        """``+1.23 [+0.40, +2.06]`` in the metric's display unit (``factor`` 100 for percentages)."""
        if not np.isfinite(self.difference):
            return "–"
        core = f"{self.difference * factor:+.{digits}f}"
        if not (np.isfinite(self.low) and np.isfinite(self.high)):
            return core
        return f"{core} [{self.low * factor:+.{digits}f}, {self.high * factor:+.{digits}f}]"


def verdict(low: float, high: float, maximize: bool = True) -> str:
    """"better" when the whole interval of ``a - b`` favours ``a``, "worse" when it favours ``b``."""
    if not (np.isfinite(low) and np.isfinite(high)):
        return NO_INTERVAL
    if low > 0:
        return BETTER if maximize else WORSE
    if high < 0:
        return WORSE if maximize else BETTER
    return WITHIN_NOISE


def compare(
    a: pd.Series,
    b: pd.Series,
    a_bootstrap: tuple[float, float] | None = None,
    b_bootstrap: tuple[float, float] | None = None,
    maximize: bool = True,
) -> Comparison:
    """Difference ``mean(a) - mean(b)`` of two configurations' per-seed values (Series indexed by
    seed), paired by seed where they share two or more seeds."""
    a, b = a.dropna(), b.dropna()
    shared = a.index.intersection(b.index)
    if len(shared) >= 2 and a.index.is_unique and b.index.is_unique:
        differences = (a.loc[shared] - b.loc[shared]).to_numpy(dtype=float)
        paired = estimate(differences)
        return Comparison(paired.mean, paired.low, paired.high, True, len(shared), verdict(paired.low, paired.high, maximize))
    left, right = estimate(a.to_numpy(dtype=float), a_bootstrap), estimate(b.to_numpy(dtype=float), b_bootstrap)
    difference = left.mean - right.mean
    se = math.hypot(left.se, right.se)
    # Welch-Satterthwaite degrees of freedom; a bootstrap side counts as known variance
    parts = [(s.se**2) ** 2 / s.df for s in (left, right) if np.isfinite(s.df) and s.se > 0]
    df = se**4 / sum(parts) if parts else math.inf
    half = t_quantile(df) * se if np.isfinite(se) else math.nan
    if se == 0:
        half = 0.0
    low, high = difference - half, difference + half
    return Comparison(difference, low, high, False, min(left.n, right.n), verdict(low, high, maximize))


def bootstrap_bounds(trials: pd.DataFrame, metric: str) -> tuple[float, float] | None:
    """The bootstrap interval of a one-trial configuration, if the table recorded it."""
    columns = (f"{metric}_ci_low", f"{metric}_ci_high")
    if len(trials) != 1 or not all(c in trials.columns for c in columns):
        return None
    low, high = (trials[c].iloc[0] for c in columns)
    return (float(low), float(high)) if pd.notna(low) and pd.notna(high) else None


def seed_values(trials: pd.DataFrame, metric: str) -> pd.Series:
    """Per-seed values of one configuration's complete trials (mean of repeats of a seed)."""
    if "seed" not in trials.columns:
        return trials[metric].reset_index(drop=True).astype(float)
    return trials.groupby("seed")[metric].mean().astype(float)


def complete_trials(results: pd.DataFrame) -> pd.DataFrame:
    return results[results["state"] == "complete"] if "state" in results.columns else results


def compare_configs(results: pd.DataFrame, a: str, b: str, metric: str, maximize: bool = True) -> Comparison:
    """Configuration ``a`` against ``b`` (``config_id`` values) on ``metric`` of the results table."""
    done = complete_trials(results)
    left, right = done[done["config_id"].astype(str) == str(a)], done[done["config_id"].astype(str) == str(b)]
    return compare(
        seed_values(left, metric), seed_values(right, metric), bootstrap_bounds(left, metric), bootstrap_bounds(right, metric), maximize
    )


def config_estimates(results: pd.DataFrame, metric: str) -> pd.DataFrame:
    """Per ``config_id``: ``mean``, ``sd``, ``n``, ``low``, ``high`` and ``source`` of the interval."""
    done = complete_trials(results).dropna(subset=[metric])
    rows = []
    for config_id, trials in done.groupby("config_id", sort=False):
        found = estimate(seed_values(trials, metric).to_numpy(), bootstrap_bounds(trials, metric))
        rows.append({"config_id": config_id, "mean": found.mean, "sd": found.sd, "n": found.n, "low": found.low, "high": found.high, "source": found.source})
    return pd.DataFrame(rows, columns=["config_id", "mean", "sd", "n", "low", "high", "source"])


def compare_to_winner(results: pd.DataFrame, winner: str, metric: str, maximize: bool = True, config_ids: Sequence[str] | None = None) -> pd.DataFrame:
    """Every other configuration (or those in ``config_ids``) against the winner: columns
    ``config_id``, ``mean``, ``n``, ``difference`` (candidate - winner), ``low``, ``high``,
    ``paired``, ``verdict`` (of the candidate against the winner), best first."""
    done = complete_trials(results).dropna(subset=[metric])
    candidates = [c for c in dict.fromkeys(done["config_id"].astype(str)) if c != str(winner)]
    if config_ids is not None:
        candidates = [c for c in candidates if c in {str(i) for i in config_ids}]
    rows = []
    for candidate in candidates:
        comparison = compare_configs(done, candidate, winner, metric, maximize)
        trials = done[done["config_id"].astype(str) == candidate]
        rows.append(
            {
                "config_id": candidate,
                "mean": float(trials[metric].mean()),
                "n": int(trials["seed"].nunique()) if "seed" in trials.columns else len(trials),
                "difference": comparison.difference,
                "low": comparison.low,
                "high": comparison.high,
                "paired": comparison.paired,
                "verdict": comparison.verdict,
            }
        )
    table = pd.DataFrame(rows, columns=["config_id", "mean", "n", "difference", "low", "high", "paired", "verdict"])
    return table.sort_values("mean", ascending=not maximize).reset_index(drop=True)


def indistinguishable_from_winner(results: pd.DataFrame, winner: str, metric: str, maximize: bool = True, config_ids: Sequence[str] | None = None) -> pd.DataFrame:
    """The candidates whose difference from the winner is within noise (rows of ``compare_to_winner``)."""
    table = compare_to_winner(results, winner, metric, maximize, config_ids)
    return table[table["verdict"] == WITHIN_NOISE].reset_index(drop=True)
