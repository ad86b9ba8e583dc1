"""Uncertainty of the numbers a study reports: percentile bootstrap intervals, mean/sd/interval
over seeds, the difference of two configurations with its interval and verdict, and the seeds a
comparison would need.

Pure functions over numbers and the results table (columns ``config_id``, ``seed``, ``state``,
the metric and, per trial, ``<metric>_ci_low``/``<metric>_ci_high`` from the bootstrap over
validation images). How the two sources of noise are used:

- A configuration with two or more seeds: a Student-t interval of the mean over seeds.
- A configuration with one seed: the seed noise pooled over the study's configurations with two
  or more seeds, if any; else its trial's bootstrap over images, which leaves training noise
  out (``source`` says which).
- A comparison of two configurations that share two or more seeds: the paired difference over
  the shared seeds (same seed, same data order); the seeds only one side has are listed, unused.
- Otherwise the difference of the means (Welch); a side with one seed needs the pooled seed
  noise, without which the comparison is ``unresolved``: an image bootstrap is no measure of
  training noise (seed sd 2.8 AP against a bootstrap SE of 0.6 AP in the proxy study).
- Two one-seed trials scored on the same images, without pooled seed noise: a paired bootstrap
  over images (both trials' replicates drew the same image weights) gives the interval of the
  two trained models' difference. It stays ``unresolved`` as a comparison of configurations,
  and says what its interval covers and what it shows of the two models.

The level of each interval (family-wise correction, looks of an adaptive study) is the caller's
``alpha``: ``scaling_lab.decisions`` decides it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Iterable, Sequence

import numpy as np
import pandas as pd
from scipy import stats as distributions

from scaling_lab.image_replicates import ImageReplicates, image_replicates
from scaling_lab.schema import ACCURACY_METRICS, interval_columns

LEVEL = 0.95
BETTER, WORSE, EQUIVALENT, UNRESOLVED = "better", "worse", "equivalent", "unresolved"
ACCURACY_BOUNDS = (0.0, 1.0)  # AP and top-1 are fractions: no interval crosses 0 or 1


def percentile_interval(replicates: Sequence[float] | np.ndarray, level: float = LEVEL) -> tuple[float, float]:
    """The central ``level`` percentile interval of bootstrap replicates (NaN when none)."""
    values = np.asarray(replicates, dtype=float)
    values = values[np.isfinite(values)]
    if values.size == 0:
        return math.nan, math.nan
    tail = (1 - level) / 2 * 100
    low, high = np.percentile(values, [tail, 100 - tail])
    return float(low), float(high)


def t_quantile(df: float, level: float = LEVEL) -> float:
    """The two-sided ``level`` critical value of Student's t with ``df`` degrees of freedom."""
    if math.isnan(df) or df <= 0:
        return math.nan
    return float(distributions.t.ppf(0.5 + level / 2, df))


def clipped(low: float, high: float, bounds: tuple[float, float] | None) -> tuple[float, float]:
    if bounds is None:
        return low, high
    return float(np.clip(low, *bounds)), float(np.clip(high, *bounds))


@dataclass(frozen=True)
class SeedNoise:
    """The seed-to-seed sd of one configuration's metric, pooled over the configurations with two
    or more seeds (``df`` = seeds - 1 summed over them)."""

    sd: float
    df: int
    configurations: int


def pool(per_configuration: Iterable[np.ndarray]) -> SeedNoise | None:
    """The pooled seed noise of per-seed values, one array per configuration; None when no
    configuration has two seeds."""
    df, squares, configurations = 0, 0.0, 0
    for values in per_configuration:
        values = np.asarray(values, dtype=float)
        values = values[np.isfinite(values)]
        if values.size >= 2:
            df += values.size - 1
            squares += float(((values - values.mean()) ** 2).sum())
            configurations += 1
    return SeedNoise(math.sqrt(squares / df), df, configurations) if df else None


def pooled_seed_noise(results: pd.DataFrame, metric: str) -> SeedNoise | None:
    """The pooled seed noise of ``metric`` over complete trials (see ``pool``)."""
    done = complete_trials(results).dropna(subset=[metric])
    if done.empty or "seed" not in done.columns:
        return None
    per_seed = done.groupby(["config_id", "seed"])[metric].mean()
    return pool(values.to_numpy() for _, values in per_seed.groupby(level=0))


@dataclass(frozen=True)
class Estimate:
    """A configuration's metric: mean over ``n`` seeds, sd, standard error and interval."""

    mean: float
    sd: float
    n: int
    se: float
    df: float  # degrees of freedom of ``se`` (inf for a bootstrap standard error)
    low: float
    high: float
    source: str  # "seeds", "pooled seed noise", "bootstrap (images only)" or "none"


def estimate(
    values: Sequence[float],
    bootstrap: tuple[float, float] | None = None,
    pooled: SeedNoise | None = None,
    bounds: tuple[float, float] | None = None,
    level: float = LEVEL,
) -> Estimate:
    """Mean, sd and ``level`` interval over seeds (clipped to ``bounds``); one seed takes the
    pooled seed noise, else the bootstrap interval over images (see the module docstring)."""
    data = np.asarray([v for v in values if v is not None and np.isfinite(v)], dtype=float)
    n = int(data.size)
    if n == 0:
        return Estimate(math.nan, math.nan, 0, math.nan, math.nan, math.nan, math.nan, "none")
    mean = float(data.mean())
    if n >= 2:
        sd = float(data.std(ddof=1))
        se = sd / math.sqrt(n)
        half = t_quantile(n - 1, level) * se
        return Estimate(mean, sd, n, se, n - 1, *clipped(mean - half, mean + half, bounds), "seeds")
    if pooled is not None:
        half = t_quantile(pooled.df, level) * pooled.sd
        return Estimate(mean, math.nan, 1, pooled.sd, pooled.df, *clipped(mean - half, mean + half, bounds), "pooled seed noise")
    if bootstrap is not None and all(v is not None and np.isfinite(v) for v in bootstrap):
        low, high = map(float, bootstrap)
        se = (high - low) / (2 * distributions.norm.ppf(0.975))
        return Estimate(mean, math.nan, 1, se, math.inf, *clipped(low, high, bounds), "bootstrap (images only)")
    return Estimate(mean, math.nan, 1, math.nan, math.nan, math.nan, math.nan, "none")


@dataclass(frozen=True)
class Comparison:
    """``a - b`` of a metric with its interval at ``level`` and the verdict for ``a`` against ``b``."""

    difference: float
    low: float
    high: float
    paired: bool
    n: int  # seeds used: shared seeds when paired, else the smaller side's count
    verdict: str
    level: float = LEVEL
    method: str = ""  # how the interval was made, e.g. "paired t over 3 seeds"
    seeds_a: tuple = ()
    seeds_b: tuple = ()
    seeds_used: tuple = ()  # the shared seeds of a paired difference
    sd: float = math.nan  # sd of the paired differences (or the pooled one), for the seeds needed
    df: float = math.nan
    note: str = ""

    def text(self, factor: float = 1.0, digits: int = 2) -> str:
        """``+1.23 [+0.40, +2.06]`` in the metric's display unit (``factor`` 100 for percentages)."""
        if not np.isfinite(self.difference):
            return "–"
        core = f"{self.difference * factor:+.{digits}f}"
        if not (np.isfinite(self.low) and np.isfinite(self.high)):
            return core
        return f"{core} [{self.low * factor:+.{digits}f}, {self.high * factor:+.{digits}f}]"

    def seeds_text(self) -> str:
        """Which seeds each side used, e.g. ``paired on seeds 0, 1 (unused: a 2, b 3)``."""
        if self.paired:
            unused = [f"{side} {_seed_list(sorted(set(seeds) - set(self.seeds_used)))}" for side, seeds in (("a", self.seeds_a), ("b", self.seeds_b)) if set(seeds) - set(self.seeds_used)]
            return f"paired on seeds {_seed_list(self.seeds_used)}" + (f" (unused: {'; '.join(unused)})" if unused else "")
        return f"seeds {_seed_list(self.seeds_a) or 'none'} vs {_seed_list(self.seeds_b) or 'none'}"


def _seed_list(seeds: Sequence) -> str:
    return ", ".join(str(int(s)) if isinstance(s, (int, float, np.integer, np.floating)) and float(s).is_integer() else str(s) for s in seeds)


def verdict(low: float, high: float, maximize: bool = True, margin: float = 0.0) -> str:
    """``equivalent`` when the whole interval of ``a - b`` lies inside ±``margin``; else ``better``
    or ``worse`` when it lies on one side of 0; else ``unresolved``."""
    if not (np.isfinite(low) and np.isfinite(high)):
        return UNRESOLVED
    if margin > 0 and -margin < low and high < margin:
        return EQUIVALENT
    if low > 0:
        return BETTER if maximize else WORSE
    if high < 0:
        return WORSE if maximize else BETTER
    return UNRESOLVED


def combine(parts: Sequence[tuple[pd.Series, float]]) -> pd.Series:
    """The weighted sum of configurations' per-seed values on the seeds all of them have (so a
    combination stays paired by seed with the configuration it is compared with)."""
    shared = parts[0][0].index
    for values, _ in parts[1:]:
        shared = shared.intersection(values.index)
    return sum((values.loc[shared] * weight for values, weight in parts), pd.Series(0.0, index=shared)).astype(float)


def paired_image_comparison(
    difference: float, a: ImageReplicates, b: ImageReplicates, alpha: float, margin: float, maximize: bool, **common
) -> Comparison:
    """Two one-seed trials on the same images: the percentile interval of their replicates'
    differences. It covers image sampling only, so the verdict on the configurations stays
    ``unresolved``; the note gives the verdict on these two trained models."""
    low, high = percentile_interval(a.values - b.values, 1 - alpha)
    models = verdict(low, high, maximize, margin)
    return Comparison(
        difference, low, high, verdict=UNRESOLVED, method=f"paired bootstrap over images ({a.values.size} replicates)",
        note=f"images only: the interval compares these two trained models (a {models} on these images), not their configurations, "
             "whose training noise one seed each cannot measure",
        **common,
    )


def compare(
    a: pd.Series,
    b: pd.Series,
    alpha: float = 1 - LEVEL,
    margin: float = 0.0,
    maximize: bool = True,
    pooled: SeedNoise | None = None,
    pairable: bool = True,
    images: tuple[ImageReplicates | None, ImageReplicates | None] = (None, None),
) -> Comparison:
    """``mean(a) - mean(b)`` of two configurations' per-seed values (Series indexed by seed) with
    its ``1 - alpha`` interval and verdict (see the module docstring). ``pairable`` is False
    when the values carry no seeds (rows are then never paired by position); ``images`` are the
    two sides' bootstrap replicates over images, used for two one-seed trials only."""
    a, b = a.dropna(), b.dropna()
    seeds = {"seeds_a": tuple(a.index), "seeds_b": tuple(b.index)} if pairable else {}
    level = 1 - alpha
    shared = a.index.intersection(b.index) if pairable and a.index.is_unique and b.index.is_unique else a.index[:0]
    if len(shared) >= 2:
        differences = (a.loc[shared] - b.loc[shared]).to_numpy(dtype=float)
        n, difference, sd = len(shared), float(differences.mean()), float(differences.std(ddof=1))
        common = dict(paired=True, n=n, level=level, seeds_used=tuple(shared), **seeds)
        if sd > 0:
            return _decided(difference, sd / math.sqrt(n), n - 1, alpha, margin, maximize, method=f"paired t over {n} seeds", sd=sd, **common)
        if pooled is None:  # two equal differences are no evidence that training noise is absent
            return Comparison(difference, math.nan, math.nan, verdict=UNRESOLVED, method=f"paired over {n} seeds", sd=0.0, df=n - 1,
                              note="the paired differences have zero spread and no pooled seed noise exists", **common)
        se = pooled.sd * math.sqrt(2 / n)
        return _decided(difference, se, pooled.df, alpha, margin, maximize, method=f"paired over {n} seeds, pooled seed sd (their spread is zero)", sd=pooled.sd * math.sqrt(2), **common)
    values_a, values_b = a.to_numpy(dtype=float), b.to_numpy(dtype=float)
    na, nb = values_a.size, values_b.size
    common = dict(paired=False, n=min(na, nb), level=level, **seeds)
    if na == 0 or nb == 0:
        return Comparison(math.nan, math.nan, math.nan, verdict=UNRESOLVED, note="a side has no complete trial", **common)
    difference = float(values_a.mean() - values_b.mean())
    if na >= 2 and nb >= 2:
        var_a, var_b = values_a.var(ddof=1) / na, values_b.var(ddof=1) / nb
        se = math.sqrt(var_a + var_b)
        if se == 0:
            return Comparison(difference, math.nan, math.nan, verdict=UNRESOLVED, method="Welch t", note="both sides have zero spread", **common)
        df = se**4 / ((var_a**2 / (na - 1) if var_a else 0) + (var_b**2 / (nb - 1) if var_b else 0))
        return _decided(difference, se, df, alpha, margin, maximize, method="Welch t", sd=math.nan, **common)
    image_a, image_b = images
    if pooled is None and na == nb == 1 and image_a is not None and image_b is not None and image_a.resampling == image_b.resampling:
        return paired_image_comparison(difference, image_a, image_b, alpha, margin, maximize, **common)
    if pooled is None:
        return Comparison(difference, math.nan, math.nan, verdict=UNRESOLVED, method="one seed",
                          note="a side has one seed and no configuration of the study has two to estimate seed noise", **common)
    se = pooled.sd * math.sqrt(1 / na + 1 / nb)
    return _decided(difference, se, pooled.df, alpha, margin, maximize, method=f"pooled seed sd ({pooled.configurations} configurations, {pooled.df} df)", sd=pooled.sd * math.sqrt(2), **common)


def _decided(difference: float, se: float, df: float, alpha: float, margin: float, maximize: bool, **fields) -> Comparison:
    half = t_quantile(df, 1 - alpha) * se
    low, high = difference - half, difference + half
    return Comparison(difference, low, high, verdict=verdict(low, high, maximize, margin), df=df, **fields)


@dataclass(frozen=True)
class SeedsNeeded:
    """Seeds per side for the stated power against ``gap``: at the sd's estimate and at the ends
    of the sd's own 95 % interval (``low`` from the smallest plausible sd). ``None`` values mean
    more than ``cap``."""

    seeds: int | None
    low: int | None
    high: int | None
    gap: float
    power: float
    cap: int = field(default=1000, compare=False)

    def seeds_text(self) -> str:
        """``64 seeds [21, > 1000]``: at the sd's estimate [at the ends of its interval]."""
        def count(n: int | None) -> str:
            return f"> {self.cap}" if n is None else str(n)

        return f"{count(self.seeds)} seeds [{count(self.low)}, {count(self.high)}]"

    def text(self, factor: float = 1.0) -> str:
        return f"{self.seeds_text()} for {self.power:.0%} power at a gap of {self.gap * factor:g}"


def seeds_for_power(sd: float, df: float, gap: float, alpha: float = 1 - LEVEL, power: float = 0.8, cap: int = 1000) -> SeedsNeeded | None:
    """Paired seeds for a two-sided t-test at ``alpha`` to detect ``gap`` with ``power``, given
    the sd of the paired differences estimated with ``df`` degrees of freedom (noncentral t);
    None when the sd is not estimated."""
    if not (np.isfinite(sd) and sd > 0 and np.isfinite(df) and df >= 1 and gap > 0):
        return None
    chi_low, chi_high = distributions.chi2.ppf([0.025, 0.975], df)
    sds = (sd, sd * math.sqrt(df / chi_high), sd * math.sqrt(df / chi_low))

    def needed(deviation: float) -> int | None:
        def reached(n: int) -> bool:
            critical = distributions.t.ppf(1 - alpha / 2, n - 1)
            shift = gap / (deviation / math.sqrt(n))
            far_side = np.nan_to_num(distributions.nct.cdf(-critical, n - 1, shift))  # underflows to NaN for large shifts
            return np.nan_to_num(distributions.nct.sf(critical, n - 1, shift)) + far_side >= power

        if not reached(cap):
            return None
        low, high = 2, cap
        while low < high:
            middle = (low + high) // 2
            low, high = (low, middle) if reached(middle) else (middle + 1, high)
        return low

    point, smallest, largest = (needed(s) for s in sds)
    return SeedsNeeded(point, smallest, largest, gap, power, cap)


def bootstrap_bounds(trials: pd.DataFrame, metric: str) -> tuple[float, float] | None:
    """The bootstrap interval of a one-trial configuration, if the table recorded it."""
    columns = interval_columns(metric)
    if len(trials) != 1 or not all(c in trials.columns for c in columns):
        return None
    low, high = (trials[c].iloc[0] for c in columns)
    return (float(low), float(high)) if pd.notna(low) and pd.notna(high) else None


def seed_values(trials: pd.DataFrame, metric: str) -> pd.Series:
    """Per-seed values of one configuration's complete trials (mean of repeats of a seed);
    without a seed column, the values in row order (never paired: see ``compare``)."""
    if "seed" not in trials.columns:
        return trials[metric].reset_index(drop=True).astype(float)
    return trials.groupby("seed")[metric].mean().astype(float)


def complete_trials(results: pd.DataFrame) -> pd.DataFrame:
    """The rows of trials that completed (all rows of a table without states, such as a hand-made one)."""
    return results[results["state"] == "complete"] if "state" in results.columns else results


def bounds_of(metric: str) -> tuple[float, float] | None:
    """The range a metric's interval is clipped to: accuracy metrics are fractions."""
    return ACCURACY_BOUNDS if metric in ACCURACY_METRICS else None


def compare_configs(
    results: pd.DataFrame,
    a: str,
    b: str,
    metric: str,
    maximize: bool = True,
    alpha: float = 1 - LEVEL,
    margin: float = 0.0,
    pooled: SeedNoise | None = None,
) -> Comparison:
    """Configuration ``a`` against ``b`` (``config_id`` values) on ``metric`` of the results table."""
    done = complete_trials(results)
    left, right = done[done["config_id"].astype(str) == str(a)], done[done["config_id"].astype(str) == str(b)]
    images = (image_replicates(left, metric), image_replicates(right, metric))
    return compare(seed_values(left, metric), seed_values(right, metric), alpha, margin, maximize, pooled, "seed" in done.columns, images)


def config_estimates(results: pd.DataFrame, metric: str, level: float = LEVEL) -> pd.DataFrame:
    """Per ``config_id``: ``mean``, ``sd``, ``n``, ``low``, ``high`` and ``source`` of the interval."""
    done = complete_trials(results).dropna(subset=[metric])
    pooled = pooled_seed_noise(done, metric)
    rows = []
    for config_id, trials in done.groupby("config_id", sort=False):
        found = estimate(seed_values(trials, metric).to_numpy(), bootstrap_bounds(trials, metric), pooled, bounds_of(metric), level)
        rows.append({"config_id": config_id, "mean": found.mean, "sd": found.sd, "n": found.n, "low": found.low, "high": found.high, "source": found.source})
    return pd.DataFrame(rows, columns=["config_id", "mean", "sd", "n", "low", "high", "source"])
