"""Pareto fronts over any number of objectives, each maximized or minimized."""

from __future__ import annotations

from typing import Sequence

import numpy as np
from numpy.typing import ArrayLike

from scaling_lab.errors import ScalingLabError

DIRECTIONS = ("maximize", "minimize")


def pareto_front(values: ArrayLike, directions: Sequence[str]) -> np.ndarray:
    """Which rows of ``values`` (n points × k objectives) are non-dominated.

    A point is dominated when another is at least as good in every objective and strictly
    better in one; identical points therefore do not dominate each other and are all kept.
    Rows with a NaN (failed or unmeasured trials) are never on the front and do not dominate.
    Returns a boolean mask of length n.
    """
    points = np.asarray(values, dtype=float)
    if points.ndim == 1:
        points = points.reshape(-1, 1)
    if points.ndim != 2 or points.shape[1] != len(directions):
        raise ScalingLabError(
            f"pareto_front: got values of shape {points.shape} for {len(directions)} direction(s); "
            "expected one column per objective"
        )
    for direction in directions:
        if direction not in DIRECTIONS:
            raise ScalingLabError(f"objective direction {direction!r} is not valid; use one of {', '.join(DIRECTIONS)}")
    signs = np.array([-1.0 if direction == "maximize" else 1.0 for direction in directions])
    costs = points * signs  # every objective as "smaller is better"
    valid = ~np.isnan(costs).any(axis=1)
    front = valid.copy()
    candidates = costs[valid]
    for index in np.flatnonzero(valid):
        no_worse = (candidates <= costs[index]).all(axis=1)
        better = (candidates < costs[index]).any(axis=1)
        front[index] = not (no_worse & better).any()
    return front
