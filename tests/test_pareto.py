"""Pareto fronts on hand-made points."""

from __future__ import annotations

import math

import numpy as np
import pytest

from scaling_lab.errors import ScalingLabError
from scaling_lab.pareto import pareto_front

MAX_MIN = ["maximize", "minimize"]


def test_accuracy_against_cost():
    # (accuracy, cost): (0.3, 1) and (0.5, 3) and (0.6, 10) trade off; (0.4, 4) is beaten by (0.5, 3)
    points = [(0.3, 1.0), (0.4, 4.0), (0.5, 3.0), (0.6, 10.0)]
    assert pareto_front(points, MAX_MIN).tolist() == [True, False, True, True]


def test_ties_in_one_objective_keep_only_the_better_other():
    points = [(0.5, 2.0), (0.5, 3.0), (0.4, 2.0)]
    assert pareto_front(points, MAX_MIN).tolist() == [True, False, False]


def test_duplicates_do_not_dominate_each_other():
    points = [(0.5, 2.0), (0.5, 2.0), (0.1, 5.0)]
    assert pareto_front(points, MAX_MIN).tolist() == [True, True, False]


def test_direction_mix_is_respected():
    points = [(1.0, 1.0), (2.0, 2.0)]
    assert pareto_front(points, ["minimize", "minimize"]).tolist() == [True, False]
    assert pareto_front(points, ["maximize", "maximize"]).tolist() == [False, True]
    assert pareto_front(points, ["maximize", "minimize"]).tolist() == [True, True]


def test_three_objectives():
    # accuracy (max), flops (min), latency (min): the third point is only saved by its latency
    points = [(0.5, 2.0, 10.0), (0.4, 3.0, 12.0), (0.5, 2.0, 12.0), (0.45, 2.5, 5.0)]
    assert pareto_front(points, ["maximize", "minimize", "minimize"]).tolist() == [True, False, False, True]


def test_single_point_and_empty_input():
    assert pareto_front([(0.3, 1.0)], MAX_MIN).tolist() == [True]
    assert pareto_front(np.empty((0, 2)), MAX_MIN).tolist() == []


def test_nan_rows_are_excluded_and_dominate_nothing():
    points = [(math.nan, 0.1), (0.3, 2.0), (0.9, math.nan), (0.2, 3.0)]
    assert pareto_front(points, MAX_MIN).tolist() == [False, True, False, False]


def test_bad_directions_and_shapes_are_reported():
    with pytest.raises(ScalingLabError, match="'maximise'.*maximize, minimize"):
        pareto_front([(1.0, 2.0)], ["maximise", "minimize"])
    with pytest.raises(ScalingLabError, match="one column per objective"):
        pareto_front([(1.0, 2.0, 3.0)], MAX_MIN)
