"""Like with like: shipped studies compare scaling rules and feature networks at measured equal FLOPs."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from scaling_lab import paper
from scaling_lab.measure import measure
from scaling_lab.spec_files import apply_overrides
from scaling_lab.study import load_study
from scaling_lab.study.flops_match import group_flops_ratios, solve_coefficient
from scaling_lab.study.runner import with_data_classes

ROOT = Path(__file__).resolve().parent.parent


def proxy_study():
    """The proxy study as the runner measures it: with the synthetic data's class count."""
    return with_data_classes(load_study(ROOT / "studies" / "proxy_findings.yaml"))


@pytest.mark.parametrize("rule", ["compound", "width", "depth", "resolution"])
def test_proxy_scaling_rules_land_within_a_few_percent_of_one_flops_target(rule):
    config = proxy_study()
    (group,) = [g for g in config.groups if g.name == rule]
    (row,) = group_flops_ratios(config.base, group.space)
    target = 2.05  # the study's common target at phi = 1 (see its header)
    assert abs(row["flops_ratio"] / target - 1) <= 0.05, f"{rule}: measured {row['flops_ratio']:.3f}x, target {target}x"


def test_proxy_feature_networks_have_equal_flops_and_the_papers_fusion():
    config = proxy_study()
    (group,) = [g for g in config.groups if g.name == "feature_network"]
    specs = [group.space.build_spec(config.base, values) for values in group.space.grid()]
    names = {paper.feature_network_row(s.feature_network, s.fusion).name for s in specs}
    assert names == {"repeated top-down FPN", "repeated FPN+PANet", "BiFPN, unweighted", "BiFPN, weighted"}
    flops = [measure(s).flops for s in specs]
    assert max(flops) / min(flops) < 1.03


@pytest.mark.parametrize("study", sorted(p.name for p in (ROOT / "studies").glob("*.yaml")))
def test_no_two_phi_values_build_the_same_resolution(study):
    """A profile that pins the resolution must not label rows with a phi it ignored."""
    data = yaml.safe_load((ROOT / "studies" / study).read_text())
    for profile in [None, *data.get("profiles", {})]:
        config = load_study(ROOT / "studies" / study, profile=profile)
        for group in config.groups:
            if group.space.best_references:  # coefficients known only after the grid ran (the runner's check)
                continue
            space = group.space
            seen: dict[tuple, dict] = {}
            for values in space.grid():
                if "phi" not in values or not float(values.get("gamma", 1.0)) > 1.0:  # NaN: infeasible, rejected
                    continue
                if any(p.name == "gamma" and p.rule == "fast_compound" for p in space.parameters):
                    continue  # resolution grows as s^0.05: less than a stride step per phi by design; depth and width move

                others = tuple(sorted((k, v) for k, v in values.items() if k != "phi"))
                resolution = space.build_spec(config.base, values).resolution
                phis = seen.setdefault(others, {})
                assert resolution not in phis.values(), f"{study} --profile {profile}: group {group.name} builds resolution {resolution} for phi {values['phi']} and {phis}"
                phis[values["phi"]] = resolution


def test_solving_resolution_against_measured_flops():
    base = apply_overrides(load_study(ROOT / "studies" / "quickstart.yaml").base, ["resolution=160"])
    gamma, ratios = solve_coefficient(base, "gamma", (1,), low=1.2, high=1.5, steps=4)
    assert 1.38 <= gamma <= 1.5 and ratios[1] == pytest.approx(1.96, abs=0.04)  # 224 = the nearest stride-32 step to 160·√2


@pytest.mark.parametrize(
    "profile, rule, worst_miss",
    [
        ("cpu", "width", 0.13),
        ("cpu", "depth", 0.15),
        ("cpu", "resolution", 0.13),
        pytest.param(None, "width", 0.03, marks=pytest.mark.slow),
        pytest.param(None, "depth", 0.03, marks=pytest.mark.slow),
        pytest.param(None, "resolution", 0.13, marks=pytest.mark.slow),
    ],
)
def test_compound_grid_single_dimension_rules_are_solved_against_measured_flops(profile, rule, worst_miss):
    """``compound_grid``: each rule lands near 2^phi at every phi as measured (the nominal sqrt 2
    width measured 1.41x at phi 1 of the cpu profile). Resolution moves in stride steps (32 px
    from the cpu profile's 128, 128 px from D0's 512), so 2.25x is its nearest to 2x; width and
    depth land within 3 % on D0, and within 12 and 15 % over phi 1-3 on the cpu profile's tiny D0
    (channels and repeats of width and depth 0.25 round in coarse steps)."""
    config = with_data_classes(load_study(ROOT / "studies" / "compound_grid.yaml", profile=profile))
    (group,) = [g for g in config.groups if g.name == rule]
    rows = group_flops_ratios(config.base, group.space)
    assert [row["phi"] for row in rows] == [1, 2, 3]
    misses = [abs(row["flops_ratio"] / row["target"] - 1) for row in rows]
    assert max(misses) <= worst_miss, f"{rule}: measured {[round(row['flops_ratio'], 3) for row in rows]}x against 2^phi"
