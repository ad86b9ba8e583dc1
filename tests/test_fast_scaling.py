"""Dollár et al.'s fast compound scaling as a search-space rule: the paper's exponents, FLOPs
doubling per phi, and fewer activations than EfficientNet's compound rule at matched FLOPs."""

import pytest

from scaling_lab.errors import ScalingLabError, SpecError
from scaling_lab.measure import measure
from scaling_lab.scaling import fast_compound_exponents
from scaling_lab.study.search_space_files import parse_search_space
from tests.laws_tables import BASE_SPEC

FAST = {name: {"type": "derived", "rule": "fast_compound"} for name in ("alpha", "beta", "gamma")}


def test_the_papers_exponents():
    fast = fast_compound_exponents()  # alpha = 0.8 in the paper's Table 4; pycls "d1_w8_r1"
    assert (fast.depth, fast.width, fast.resolution) == pytest.approx((0.1, 0.4, 0.05))
    for share in (1 / 3, 0.5, 0.8, 1.0):
        e = fast_compound_exponents(share)
        assert e.depth + 2 * e.width + 2 * e.resolution == pytest.approx(1.0)
    assert fast_compound_exponents(1.0).depth == 0  # width-only scaling
    assert fast_compound_exponents(1 / 3).depth == pytest.approx(2 * fast_compound_exponents(1 / 3).width)  # uniform: each dimension s^(1/3) of FLOPs
    with pytest.raises(SpecError, match="width_share 1.5 must be in"):
        fast_compound_exponents(1.5)


def test_a_search_space_rule_that_doubles_flops_per_phi():
    space = parse_search_space({"parameters": {**FAST, "phi": {"type": "choice", "values": [0, 3]}}}, BASE_SPEC, "fast.yaml")
    _, scaled = space.grid()
    assert (scaled["alpha"], scaled["beta"], scaled["gamma"]) == pytest.approx((2**0.1, 2**0.4, 2**0.05), rel=1e-5)
    assert scaled["alpha"] * scaled["beta"] ** 2 * scaled["gamma"] ** 2 == pytest.approx(2.0, rel=1e-5)
    half = parse_search_space({"parameters": {"beta": {"type": "derived", "rule": "fast_compound", "width_share": 0.5, "target": 4}}}, BASE_SPEC, "f.yaml")
    assert half.grid()[0]["beta"] == pytest.approx(4**0.25)


def test_fewer_activations_than_efficientnet_compound_at_matched_flops():
    fast = parse_search_space({"parameters": {**FAST, "phi": 3}}, BASE_SPEC, "fast.yaml")
    compound = parse_search_space({"parameters": {"alpha": 1.2, "beta": 1.1, "gamma": 1.15, "phi": 3}}, BASE_SPEC, "compound.yaml")
    base = measure(BASE_SPEC)
    fast_spec, compound_spec = (space.build_spec(BASE_SPEC, space.grid()[0]) for space in (fast, compound))
    fast_cost, compound_cost = measure(fast_spec), measure(compound_spec)
    # measured: 3.98x and 4.03x FLOPs; activations 2.29x against 3.12x (the paper: about sqrt(s) against s)
    assert fast_cost.flops / base.flops == pytest.approx(compound_cost.flops / base.flops, rel=0.05)
    assert fast_cost.activations / base.activations < 0.8 * compound_cost.activations / base.activations


@pytest.mark.parametrize(
    "raw, message",
    [
        ({"phi": {"type": "derived", "rule": "fast_compound"}}, "the fast_compound rule sets alpha, beta and gamma, not 'phi'"),
        ({"alpha": {"type": "derived", "rule": "fast_compound", "width_share": 2}}, "width_share: 2 must be in [0, 1]"),
        ({"alpha": 1.2, "gamma": {"type": "derived", "rule": "compound_gamma", "width_share": 0.8}}, "only the fast_compound rule takes a width share"),
    ],
)
def test_bad_fast_rules_are_clear_errors(raw, message):
    with pytest.raises(ScalingLabError, match=message.replace("[", r"\[").replace("]", r"\]")):
        parse_search_space({"parameters": raw}, BASE_SPEC, "space.yaml")
