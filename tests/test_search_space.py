import math

import pytest

from scaling_lab.errors import ScalingLabError
from scaling_lab.presets import preset
from scaling_lab.spec_files import load_spec
from scaling_lab.study.search_space import InfeasibleCandidate
from scaling_lab.study.search_space_files import parse_search_space

BASE = load_spec("efficientdet-d0", ["backbone.width=0.25", "backbone.depth=0.25", "resolution=128", "channels=16", "feature_repeats=1", "head_repeats=1"])


def space(parameters, constraints=None):
    data = {"parameters": parameters}
    if constraints is not None:
        data["constraints"] = constraints
    return parse_search_space(data, BASE, "space.yaml")


def test_grid_expands_conditionals_and_derives_gamma():
    s = space(
        {
            "feature_network": {"type": "choice", "values": ["fpn", "bifpn"]},
            "fusion": {"type": "choice", "values": ["sum", "fast"], "when": {"feature_network": "bifpn"}},
            "alpha": {"type": "grid", "values": [1.2]},
            "beta": 1.1,
            "gamma": {"type": "derived", "rule": "compound_gamma"},
        }
    )
    grid = s.grid()
    assert [g.get("fusion") for g in grid] == [None, "sum", "fast"]
    assert all(math.isclose(g["alpha"] * g["beta"] ** 2 * g["gamma"] ** 2, 2.0, rel_tol=1e-5) for g in grid)


def test_int_float_grids_and_resolution_snapping():
    s = space({"channels": {"type": "int", "low": 16, "high": 32, "step": 8}, "resolution": {"type": "float", "low": 100, "high": 300, "step": 100}})
    assert [g["channels"] for g in s.grid()][:3] == [16, 16, 16]
    assert len(s.grid()) == 9
    spec = s.build_spec(BASE, {"channels": 24, "resolution": 300})
    assert spec.resolution % 2**spec.max_level == 0 and spec.channels == 24


def test_compound_scaling_and_infeasible_gamma():
    s = space({"alpha": {"type": "grid", "values": [1.2, 2.0]}, "beta": {"type": "grid", "values": [1.1]}, "gamma": {"type": "derived", "rule": "compound_gamma"}, "phi": 1})
    feasible, infeasible = s.grid()
    assert s.build_spec(BASE, feasible).backbone.depth == pytest.approx(0.25 * 1.2)
    with pytest.raises(InfeasibleCandidate):
        s.build_spec(BASE, infeasible)


def test_compound_scaling_of_a_rectangular_base_scales_both_sides():
    s = space({"phi": 1, "alpha": 1.2, "beta": 1.1, "gamma": 1.5})
    wide = s.build_spec(BASE.replace(resolution=[128, 256]), s.grid()[0])
    assert wide.resolution == (256, 384)  # 192 (1.5 x 128, half-way: up) and 384, multiples of 2^7


def test_constraints_relative_and_absolute():
    s = space({"phi": 1}, {"flops": {"min": 1.5, "max": 2.5, "relative": True}, "params": {"max": 10}})
    assert s.violation({"flops": 2.0, "params": 5}, {"flops": 1.0, "params": 1}) is None
    assert "below" in s.violation({"flops": 1.0, "params": 5}, {"flops": 1.0, "params": 1})
    assert "params 20 is above" in s.violation({"flops": 2.0, "params": 20}, {"flops": 1.0, "params": 1})


def test_backbone_spec_spaces():
    s = parse_search_space({"parameters": {"dropout": [0.2, 0.3], "phi": 1, "alpha": 1.2}}, preset("efficientnet-b0"), "b.yaml")
    spec = s.build_spec(preset("efficientnet-b0"), s.grid()[1])
    assert spec.dropout == 0.3 and spec.depth == pytest.approx(1.2)


@pytest.mark.parametrize(
    ("parameters", "constraints", "fragment"),
    [
        ({"chanels": [16]}, None, "parameters.chanels: 'chanels' is neither a spec field"),
        ({"channels": {"type": "choice", "values": []}}, None, "parameters.channels.values: expected a non-empty list"),
        ({"channels": {"type": "grid", "values": ["a"]}}, None, "a grid lists numbers"),
        ({"channels": {"type": "int", "low": 8.5, "high": 16}}, None, "needs integer low, high and step"),
        ({"channels": {"type": "int", "low": 32, "high": 16}}, None, "the range is empty"),
        ({"channels": {"type": "range", "low": 8}}, None, "valid types are choice, grid, int"),
        ({"channels": {"type": "int", "low": 8, "high": 16, "stepp": 8}}, None, "unknown key(s) 'stepp'"),
        ({"fusion": {"type": "choice", "values": ["sum"], "when": {"feature_network": "bifpn"}}}, None, "'feature_network' is not an earlier parameter"),
        ({"gamma": {"type": "derived", "rule": "compound_gamma"}}, None, "needs alpha and/or beta declared before it"),
        ({"channels": 16}, {"flops": {"min": 3, "max": 2}}, "constraints.flops: min 3 is above max 2"),
        ({"channels": 16}, {"latency": {"max": 2}}, "valid costs are params, flops"),
        ({"channels": 16}, {"flops": {"max": "big"}}, "constraints.flops.max: expected a number"),
        ({}, None, "parameters: expected a non-empty mapping"),
    ],
)
def test_bad_search_spaces_name_file_key_and_valid_values(parameters, constraints, fragment):
    with pytest.raises(ScalingLabError) as error:
        space(parameters, constraints)
    assert str(error.value).startswith("space.yaml: ")
    assert fragment in str(error.value)


def test_unenumerable_parameter_in_grid():
    s = space({"backbone.width": {"type": "log_float", "low": 0.2, "high": 0.4}})
    with pytest.raises(ScalingLabError, match="parameters.backbone.width: a log_float parameter without a step cannot be enumerated"):
        s.grid()


def test_unknown_top_level_key():
    with pytest.raises(ScalingLabError, match="unknown key\\(s\\) 'params'; valid keys are parameters, constraints"):
        parse_search_space({"parameters": {"channels": 16}, "params": {}}, BASE, "space.yaml")


def test_log_int_with_a_step_is_rejected_at_load_naming_the_file_and_parameter():
    with pytest.raises(ScalingLabError, match=r"^space\.yaml: parameters\.channels: log: true with step 8 is not valid"):
        space({"channels": {"type": "int", "low": 8, "high": 64, "step": 8, "log": True}})
    # Step 1 (or none) on a log scale is what Optuna samples.
    assert space({"channels": {"type": "int", "low": 8, "high": 64, "step": 1, "log": True}}).parameters[0].log


@pytest.mark.parametrize("resolution, snapped", [(576, 640), (704, 768), (575, 512), (703, 640)])
def test_half_way_resolutions_round_up_alike(resolution, snapped):
    # D0-style detectors need multiples of 2^7 = 128: 576 = 4.5 x 128 and 704 = 5.5 x 128 are both
    # half-way, and both go up (Python's round() sends 4.5 down and 5.5 up).
    from scaling_lab.scaling import scale_detector, snap_resolution

    assert snap_resolution(resolution, 7) == snapped
    assert space({"resolution": {"type": "grid", "values": [resolution]}}).build_spec(BASE, {"resolution": resolution}).resolution == snapped
    assert scale_detector(BASE.replace(resolution=512), resolution=resolution / 512).resolution == snapped
