"""Design spaces as Radosavovic et al. compare them ("On Network Design Spaces for Visual
Recognition", ICCV 2019): the empirical distribution function of the error of randomly sampled
models, F(e) = share of models with error below e, normalized over complexity so that spaces
that sample different FLOPs are compared like with like: log FLOPs is cut into bins shared by
all spaces, every occupied bin weighs the same, and its models share the bin's weight.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping

import numpy as np
import pandas as pd

from scaling_lab.errors import ScalingLabError
from scaling_lab.laws.cells import main_metric, table_cells

BINS = 10
MIN_MODELS = 5
RANDOM_SAMPLERS = ("random",)


@dataclass(frozen=True)
class ErrorEDF:
    group: str
    errors: np.ndarray  # sorted
    cumulative: np.ndarray  # F at each sorted error (normalized over complexity)
    models: int


def complexity_weights(log_flops: np.ndarray, edges: np.ndarray) -> np.ndarray:
    """Weights summing to 1: each occupied bin of ``edges`` the same, shared by its models."""
    bins = np.clip(np.searchsorted(edges, log_flops, side="right") - 1, 0, len(edges) - 2)
    occupied, counts = np.unique(bins, return_counts=True)
    per_model = dict(zip(occupied, 1.0 / (counts * len(occupied))))
    return np.array([per_model[b] for b in bins])


def normalized_edf(errors: np.ndarray, flops: np.ndarray, edges: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(sorted errors, F at each): the complexity-normalized error EDF."""
    weights = complexity_weights(np.log(flops), edges)
    order = np.argsort(errors, kind="stable")
    return errors[order], np.cumsum(weights[order])


def sampled_groups(info: Mapping[str, Any]) -> bool:
    """Whether the study sampled its configurations at random (the EDF estimates a design space
    only from an unbiased sample; a grid or TPE's choices are not one)."""
    sampler = ((info.get("definition") or {}).get("sampler") or {}).get("type")
    return sampler in RANDOM_SAMPLERS


def error_edfs(info: Mapping[str, Any], frame: pd.DataFrame, where: str, bins: int = BINS) -> list[ErrorEDF]:
    """Each group's normalized error EDF (error = 1 - metric; the metric itself when minimized)."""
    metric, maximize = main_metric(info, frame, where)
    cells = table_cells(frame, [metric, "flops"], where)
    by_group: dict[str, list] = {}
    for cell in cells:
        by_group.setdefault(cell.group, []).append(cell)
    by_group = {group: members for group, members in by_group.items() if len(members) >= MIN_MODELS}
    if not by_group:
        raise ScalingLabError(f"{where}: no group has {MIN_MODELS} or more complete configurations with measured FLOPs; an error EDF needs a sample of models")
    log_flops = np.log([cell.mean[1] for members in by_group.values() for cell in members])
    edges = np.linspace(log_flops.min(), log_flops.max() + 1e-12, bins + 1)
    found = []
    for group, members in sorted(by_group.items()):
        errors = np.array([1.0 - cell.mean[0] if maximize else cell.mean[0] for cell in members])
        flops = np.array([cell.mean[1] for cell in members])
        sorted_errors, cumulative = normalized_edf(errors, flops, edges)
        found.append(ErrorEDF(group, sorted_errors, cumulative, len(members)))
    return found
