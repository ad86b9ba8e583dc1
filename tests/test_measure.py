"""Measuring: fvcore FLOPs against the official figures, element-wise handles, the cache."""

import time

import pytest

from scaling_lab import measure as measure_module
from scaling_lab.cli import main
from scaling_lab.measure import measure, significant_uncounted
from scaling_lab.paper import OFFICIAL_FLOPS
from scaling_lab.presets import PRESETS, preset
from scaling_lab.study import load_study, run_study
from tests.helpers import TINY, TINY_DETECTOR
from tests.helpers import fake_trial, write_study


def test_d0_flops_within_one_percent_of_the_official_count():
    result = measure(preset("efficientdet-d0"))
    assert result.flops == pytest.approx(OFFICIAL_FLOPS["efficientdet-d0"], rel=0.01)
    assert result.params == 3_880_067 and result.resolution == 512


@pytest.mark.slow
@pytest.mark.parametrize("name", [name for name in OFFICIAL_FLOPS if name != "efficientdet-d0"])
def test_detector_flops_within_one_percent_of_the_official_count(name):
    assert measure(PRESETS[name]).flops == pytest.approx(OFFICIAL_FLOPS[name], rel=0.01)


def test_b4_flops_are_the_faithful_count_not_the_papers_rounded_figure():
    # The paper prints 4.2B; counting the official architecture gives about 4.49G.
    assert measure(preset("efficientnet-b4")).flops == pytest.approx(4.49e9, rel=0.005)


def test_breakdown_adds_up_by_part():
    result = measure(TINY)
    assert set(result.breakdown) == {"backbone", "feature_network", "heads"}
    for key in ("params", "flops", "flops_elementwise", "activations"):
        assert sum(part[key] for part in result.breakdown.values()) == getattr(result, key)
    assert set(measure(preset("efficientnet-b0")).breakdown) == {"backbone", "classifier"}


def test_a_wide_input_costs_its_pixels_not_the_square_it_would_be_letterboxed_into():
    # 64x128 is half the pixels of the 128x128 square a 2:1 image is letterboxed into today;
    # FLOPs and activations follow (D0 at 384x640 vs 640x640: 0.6001 of the FLOPs, README)
    square, wide = measure(TINY_DETECTOR.replace(resolution=128)), measure(TINY_DETECTOR.replace(resolution=[64, 128]))
    assert wide.resolution == [64, 128] and wide.params == square.params
    ratio = wide.flops / square.flops
    print(f"FLOPs 64x128 / 128x128: {ratio:.4f}")
    assert ratio == pytest.approx(0.5, rel=0.01) and wide.activations / square.activations == pytest.approx(0.5, rel=0.01)
    with_pixel_weights = TINY_DETECTOR.replace(resolution=[64, 128], fusion_weights="pixel")  # weight maps of each level's shape
    assert measure(with_pixel_weights).params > wide.params


def test_fusion_rules_differ_only_in_elementwise_flops():
    results = {fusion: measure(TINY.replace(fusion=fusion)) for fusion in ("sum", "weighted", "softmax", "fast")}
    assert len({r.flops for r in results.values()}) == 1  # the papers' convention: convs only
    elementwise = {fusion: r.flops_elementwise for fusion, r in results.items()}
    assert elementwise["sum"] < elementwise["weighted"] < elementwise["softmax"] < elementwise["fast"]


def test_cached_measurement_returns_the_same_figures_fast():
    spec = preset("efficientdet-d7")
    first = measure(spec)
    start = time.perf_counter()
    again = measure(spec)
    assert time.perf_counter() - start < 0.5
    assert again == first


def test_latency_is_timed_at_batch_one_and_batch_n():
    result = measure(TINY, latency=True, batch_size=2, use_cache=False)
    # Only what does not depend on timing noise: the figures themselves are benchmarks' business.
    assert result.latency.batch_size == 2 and result.latency.dtype == "float32"
    for timing in (result.latency.batch1, result.latency.batch):
        assert timing.runs == 10 and 0 < timing.min_ms <= timing.q1_ms <= timing.median_ms <= timing.q3_ms <= timing.max_ms
    assert result.latency.device.startswith("cpu")


# --- operators fvcore cannot count ------------------------------------------------------------


def test_uncounted_operators_are_recorded_and_ours_are_all_negligible():
    result = measure(preset("efficientdet-d0"))
    assert {"aten::silu", "aten::max_pool2d", "aten::pad"} <= set(result.uncounted_ops)
    assert all(calls > 0 for calls in result.uncounted_ops.values())
    assert result.uncounted_significant == {}  # every operator our builder uses is counted or cheap
    assert significant_uncounted({"aten::silu_": 4, "aten::scaled_dot_product_attention": 2}) == {"aten::scaled_dot_product_attention": 2}


def test_measure_command_shows_the_uncounted_operators(capsys):
    assert main(["measure", "efficientdet-d0", "--set", "resolution=256"]) == 0
    assert "uncounted    aten::max_pool2d×" in capsys.readouterr().out


def test_a_flops_constraint_fails_loudly_on_an_operator_that_may_hide_multiply_adds(tmp_path, monkeypatch):
    real_count = measure_module.count

    def count_with_attention(spec):
        counts = real_count(spec)
        if spec.channels == 24:  # as if this configuration's nodes used an attention fvcore cannot count
            counts["uncounted_ops"] = {**counts["uncounted_ops"], "aten::scaled_dot_product_attention": 3}
        return counts

    monkeypatch.setattr(measure_module, "count", count_with_attention)
    monkeypatch.setenv("SCALING_LAB_CACHE", str(tmp_path / "cache"))
    path = write_study(tmp_path, repeats=1, search_space={
        "parameters": {"channels": {"type": "grid", "values": [16, 24]}},
        "constraints": {"flops": {"max": 4.0, "relative": True}},
    })
    frame = run_study(load_study(path), trial_function=fake_trial, out=None).set_index("channels")
    assert frame.loc[16, "state"] == "complete" and "aten::silu×" in frame.loc[16, "uncounted_ops"]
    assert frame.loc[24, "state"] == "failed"
    assert "flops constraint cannot be checked" in frame.loc[24, "error"]
    assert "aten::scaled_dot_product_attention×3" in frame.loc[24, "error"]
    # without a FLOPs constraint the operator is only recorded
    path = write_study(tmp_path, repeats=1, run_dir=str(tmp_path / "free"),
                       search_space={"parameters": {"channels": {"type": "grid", "values": [24]}}})
    free = run_study(load_study(path), trial_function=fake_trial, out=None)
    assert free.loc[0, "state"] == "complete" and "aten::scaled_dot_product_attention×3" in free.loc[0, "uncounted_ops"]
