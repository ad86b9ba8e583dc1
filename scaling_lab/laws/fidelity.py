"""Proxy fidelity: would a cheaper budget have ranked the configurations the same way?

Within a study, each group's configurations are ranked at every validation epoch that all of its
trials recorded and at the end; across two studies, the configurations they share are ranked in
each. Kendall's tau (tau-b, ties allowed) measures the agreement, with a 95 % interval from
bootstrap replicates that redraw the configurations and, within each, its seeds. The early
winner is compared with the final one: whether it is the same configuration, how often the seed
replicates agree on that, its final rank, and the verdict on its final metric against the final
winner's (``scaling_lab.stats.compare``: better, worse, equivalent or unresolved).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Mapping, Sequence

import numpy as np
import pandas as pd
from scipy import stats as distributions

from scaling_lab import stats
from scaling_lab.errors import ScalingLabError
from scaling_lab.laws.cells import REPLICATES, Cell, interval, main_metric, require_columns, resampled_means, table_cells
from scaling_lab.schema import read_curve

MIN_CONFIGURATIONS = 3
FINAL = "end"


@dataclass(frozen=True)
class RankAgreement:
    label: str  # "epoch 3", "end"
    configurations: int
    tau: float
    low: float
    high: float
    early_winner: str
    final_winner: str
    early_winner_final_rank: int  # 1 is the final winner
    winner_agreement: float  # share of seed replicates in which the two winners are the same
    verdict: str  # the early winner's final metric against the final winner's (stats.compare)

    @property
    def same_winner(self) -> bool:
        return self.early_winner == self.final_winner


PAIR_BUDGET = 20_000_000  # pair comparisons held at once by ``kendall_taus``


def kendall_tau(a: np.ndarray, b: np.ndarray) -> float:
    found = distributions.kendalltau(a, b).statistic
    return float(found) if found is not None and np.isfinite(found) else math.nan


def kendall_taus(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Kendall's tau-b of each row pair of ``a`` and ``b`` (replicates, m) at once: the sum of
    pairwise sign products over the square root of the untied pair counts (the same number as
    scipy's ``kendalltau``, which takes one ranking at a time: too slow for bootstrap replicates)."""
    first, second = np.triu_indices(a.shape[1], k=1)
    rows = max(1, PAIR_BUDGET // max(len(first), 1))
    out = np.empty(len(a))
    for start in range(0, len(a), rows):
        part = slice(start, start + rows)
        x = np.sign(a[part][:, first] - a[part][:, second])
        y = np.sign(b[part][:, first] - b[part][:, second])
        with np.errstate(invalid="ignore", divide="ignore"):
            out[part] = (x * y).sum(axis=1) / np.sqrt(np.abs(x).sum(axis=1) * np.abs(y).sum(axis=1))
    return out


def rank_agreement(
    label: str,
    keys: Sequence[str],
    early: tuple[np.ndarray, np.ndarray],
    final: tuple[np.ndarray, np.ndarray],
    maximize: bool,
    rng: np.random.Generator,
    verdict: str = stats.UNRESOLVED,
) -> RankAgreement:
    """Agreement of two rankings of the same configurations: ``early`` and ``final`` are each
    (means (m,), seed-resampled means (replicates, m)), paired by replicate where they come from
    the same trials."""
    (early_means, early_draws), (final_means, final_draws) = early, final
    m = len(keys)
    if m < MIN_CONFIGURATIONS:
        raise ScalingLabError(f"too few configurations to compare rankings: {m}; Kendall's tau needs at least {MIN_CONFIGURATIONS}")
    sign = 1.0 if maximize else -1.0
    picks = rng.integers(0, m, size=(len(early_draws), m))
    taus = kendall_taus(np.take_along_axis(early_draws, picks, axis=1), np.take_along_axis(final_draws, picks, axis=1))
    low, high = interval(taus, math.inf) if np.isfinite(taus).any() else (math.nan, math.nan)
    early_best, final_best = int(np.argmax(sign * early_means)), int(np.argmax(sign * final_means))
    final_order = np.argsort(-sign * final_means, kind="stable")
    agreement = float(np.mean(np.argmax(sign * early_draws, axis=1) == np.argmax(sign * final_draws, axis=1)))
    return RankAgreement(
        label, m, kendall_tau(early_means, final_means), low, high, keys[early_best], keys[final_best],
        int(np.flatnonzero(final_order == early_best)[0]) + 1, agreement, verdict,
    )


def curve_columns(frame: pd.DataFrame, metric: str, where: str) -> tuple[pd.DataFrame, list[str]]:
    """The complete trials with one column ``epoch <n>`` per validation epoch any of them
    recorded before its last (from each trial's curve; NaN where a trial has none)."""
    require_columns(frame, [metric, "curve"], where, "per-epoch rankings (each trial's validation curve)")
    done = stats.complete_trials(frame).copy()
    per_trial = [{float(p["epoch"]): float(p[metric]) for p in read_curve(text) if p.get(metric) is not None} for text in done["curve"]]
    epochs = sorted({e for points in per_trial for e in points if e < max(points)})
    columns = [f"epoch {e:g}" for e in epochs]
    for epoch, column in zip(epochs, columns):
        done[column] = [points.get(epoch, math.nan) if epoch < max(points, default=0) else math.nan for points in per_trial]
    return done, columns


def shared_columns(trials: pd.DataFrame, columns: Sequence[str]) -> list[str]:
    """The epoch columns every one of ``trials`` recorded."""
    return [c for c in columns if trials[c].notna().all()] if len(trials) else []


def within_study(info: Mapping[str, Any], frame: pd.DataFrame, where: str, replicates: int = REPLICATES, seed: int = 0) -> dict[str, list[RankAgreement]]:
    """Per group with at least three configurations: each validation epoch's ranking against the
    final one (the last row compares the end with itself only when no epoch was recorded)."""
    metric, maximize = main_metric(info, frame, where)
    table, every_column = curve_columns(frame, metric, where)
    if not every_column:
        raise ScalingLabError(
            f"{where}: the trials recorded no validation before their last epoch, so there is no early ranking to compare; "
            "run the study with task.eval_every smaller than task.epochs"
        )
    found: dict[str, list[RankAgreement]] = {}
    rng = np.random.default_rng(seed)
    if "group" not in table.columns:
        table = table.assign(group="")
    for group in sorted(table["group"].astype(str).unique()):
        columns = shared_columns(table[table["group"].astype(str) == group], every_column)
        cells = table_cells(table, [metric, *columns], where, group)
        if len(cells) < MIN_CONFIGURATIONS or not columns:
            continue
        keys = [cell.key for cell in cells]
        means = np.array([cell.mean for cell in cells])
        draws = resampled_means(cells, replicates, rng)
        rows = []
        for index, column in enumerate(columns, start=1):
            early_best = keys[int(np.argmax((1 if maximize else -1) * means[:, index]))]
            final_best = keys[int(np.argmax((1 if maximize else -1) * means[:, 0]))]
            verdict = stats.compare_configs(table, early_best, final_best, metric, maximize).verdict if early_best != final_best else "same"
            rows.append(rank_agreement(column, keys, (means[:, index], draws[:, :, index]), (means[:, 0], draws[:, :, 0]), maximize, rng, verdict))
        found[group] = rows
    return found


def across_studies(
    a: tuple[Mapping[str, Any], pd.DataFrame, str], b: tuple[Mapping[str, Any], pd.DataFrame, str], replicates: int = REPLICATES, seed: int = 0
) -> tuple[str, list[RankAgreement]]:
    """Study A (the cheap one) against study B (the full one) on the configurations both ran,
    matched by spec (else by group and search parameters): each of A's validation epochs and A's
    end against B's end. Returns how they were matched and the rows."""
    (info_a, frame_a, where_a), (info_b, frame_b, where_b) = a, b
    metric_a, maximize = main_metric(info_a, frame_a, where_a)
    metric_b, _ = main_metric(info_b, frame_b, where_b)
    table_a, columns = curve_columns(frame_a, metric_a, where_a)
    columns = shared_columns(table_a, columns)
    cells_a = table_cells(table_a, [metric_a, *columns], where_a)
    cells_b = table_cells(frame_b, [metric_b], where_b)
    matched, how = _match(cells_a, cells_b)
    if len(matched) < MIN_CONFIGURATIONS:
        raise ScalingLabError(
            f"{where_a} and {where_b} share {len(matched)} configuration(s) (matched by spec, else by group and search parameters); "
            f"at least {MIN_CONFIGURATIONS} are needed to compare their rankings"
        )
    rng = np.random.default_rng(seed)
    keys = [left.key for left, _ in matched]
    means_a = np.array([left.mean for left, _ in matched])
    draws_a = resampled_means([left for left, _ in matched], replicates, rng)
    means_b = np.array([right.mean[0] for _, right in matched])
    draws_b = resampled_means([right for _, right in matched], replicates, rng)[:, :, 0]
    rows = []
    for index, label in [*((i, c) for i, c in enumerate(columns, start=1)), (0, FINAL)]:
        rows.append(rank_agreement(f"A {label}", keys, (means_a[:, index], draws_a[:, :, index]), (means_b, draws_b), maximize, rng))
    return how, rows


def _match(cells_a: Sequence[Cell], cells_b: Sequence[Cell]) -> tuple[list[tuple[Cell, Cell]], str]:
    by_spec = {cell.spec_hash: cell for cell in cells_b if cell.spec_hash}
    spec_matches = [(cell, by_spec[cell.spec_hash]) for cell in cells_a if cell.spec_hash in by_spec]
    if len(spec_matches) >= MIN_CONFIGURATIONS:
        return spec_matches, "by spec"
    by_config = {cell.key: cell for cell in cells_b}
    return [(cell, by_config[cell.key]) for cell in cells_a if cell.key in by_config], "by group and search parameters (the specs differ)"
