"""The spec: presets as the official configurations, round trips, hashing, validation, scaling."""

import json

import pytest
import yaml

from scaling_lab.errors import SpecError
from scaling_lab.presets import PRESETS, preset
from scaling_lab.scaling import (
    compound_multipliers,
    efficientdet_heuristic,
    gamma_for,
    round_channels,
    round_repeats,
    scale_detector,
    snap_resolution,
)
from scaling_lab.spec import BackboneSpec, DetectorSpec, Stage, spec_from_dict
from scaling_lab.spec_files import apply_overrides, load_spec, parse_overrides

D0 = preset("efficientdet-d0")


@pytest.mark.parametrize("name", list(PRESETS))
def test_every_preset_round_trips_through_dict_json_and_yaml(name):
    spec = PRESETS[name]
    assert spec_from_dict(spec.to_dict()) == spec
    assert spec_from_dict(json.loads(spec.to_json())) == spec
    assert spec_from_dict(yaml.safe_load(spec.to_yaml())) == spec
    assert spec_from_dict(spec.to_dict()).spec_hash == spec.spec_hash


def test_specs_are_hashable_and_equal_specs_hash_equal():
    assert hash(D0) == hash(DetectorSpec(backbone=BackboneSpec(resolution=512)))
    assert D0.spec_hash == DetectorSpec().spec_hash
    assert len({spec.spec_hash for spec in PRESETS.values()}) == len(PRESETS)
    assert D0.replace(channels=88).spec_hash != D0.spec_hash


def test_spec_hash_is_stable_across_versions():
    # A content hash must not change between processes or releases: studies key results by it.
    assert DetectorSpec().spec_hash == "950377a68ce12bcd"
    # a square written as [height, width] is the same spec: an int, as before rectangles existed
    assert DetectorSpec(resolution=(512, 512)).spec_hash == "950377a68ce12bcd"
    assert D0.replace(resolution=[512, 512]).to_dict()["resolution"] == 512


def test_a_rectangular_resolution_round_trips_and_reaches_the_backbone():
    spec = apply_overrides(D0, ["resolution=[384, 640]"])
    assert spec.resolution == spec.backbone.resolution == (384, 640) and spec.input_size == (384, 640)
    assert spec.to_dict()["resolution"] == [384, 640] and json.loads(spec.to_json())["resolution"] == [384, 640]
    for text in (spec.to_json(), spec.to_yaml()):
        again = spec_from_dict(yaml.safe_load(text))
        assert again == spec and again.spec_hash == spec.spec_hash != D0.spec_hash
    assert BackboneSpec(resolution=(224, 320)).input_size == (224, 320)


@pytest.mark.parametrize(
    "name, backbone_width, backbone_depth, resolution, channels, repeats, head, fusion, anchor_scale, max_level",
    [
        ("efficientdet-d0", 1.0, 1.0, 512, 64, 3, 3, "fast", 4.0, 7),
        ("efficientdet-d1", 1.0, 1.1, 640, 88, 4, 3, "fast", 4.0, 7),
        ("efficientdet-d2", 1.1, 1.2, 768, 112, 5, 3, "fast", 4.0, 7),
        ("efficientdet-d3", 1.2, 1.4, 896, 160, 6, 4, "fast", 4.0, 7),
        ("efficientdet-d4", 1.4, 1.8, 1024, 224, 7, 4, "fast", 4.0, 7),
        ("efficientdet-d5", 1.6, 2.2, 1280, 288, 7, 4, "fast", 4.0, 7),
        ("efficientdet-d6", 1.8, 2.6, 1280, 384, 8, 5, "sum", 4.0, 7),
        ("efficientdet-d7", 1.8, 2.6, 1536, 384, 8, 5, "sum", 5.0, 7),
        ("efficientdet-d7x", 2.0, 3.1, 1536, 384, 8, 5, "sum", 4.0, 8),
    ],
)
def test_efficientdet_presets_match_the_official_table(name, backbone_width, backbone_depth, resolution, channels, repeats, head, fusion, anchor_scale, max_level):
    spec = PRESETS[name]
    assert (spec.backbone.width, spec.backbone.depth, spec.resolution) == (backbone_width, backbone_depth, resolution)
    assert (spec.channels, spec.feature_repeats, spec.head_repeats) == (channels, repeats, head)
    assert (spec.fusion, spec.anchor_scale, spec.max_level, spec.feature_network) == (fusion, anchor_scale, max_level, "bifpn")
    assert spec.backbone.resolution == spec.resolution


def test_efficientnet_presets_match_the_paper():
    expected = {"b0": (1.0, 1.0, 224, 0.2), "b4": (1.4, 1.8, 380, 0.4), "b7": (2.0, 3.1, 600, 0.5)}
    for short, values in expected.items():
        spec = PRESETS[f"efficientnet-{short}"]
        assert (spec.width, spec.depth, spec.resolution, spec.dropout) == values


def test_b0_stage_table_is_the_papers():
    stages = BackboneSpec().parsed_stages
    assert [(s.kernel, s.stride, s.expand, s.channels, s.repeats) for s in stages] == [
        (3, 1, 1, 16, 1), (3, 2, 6, 24, 2), (5, 2, 6, 40, 2), (3, 2, 6, 80, 3), (5, 1, 6, 112, 3), (5, 2, 6, 192, 4), (3, 1, 6, 320, 1),
    ]
    assert BackboneSpec().feature_levels == {1: 0, 2: 1, 3: 2, 4: 4, 5: 6}


def test_overrides_change_nested_fields_and_validate():
    spec = apply_overrides(D0, ["backbone.width=1.2", "fusion=softmax", "aspect_ratios=[1.0, 2.0]"])
    assert spec.backbone.width == 1.2 and spec.fusion == "softmax" and spec.num_anchors == 6
    assert parse_overrides(["a.b.c=3", "a.d=x"]) == {"a": {"b": {"c": 3}, "d": "x"}}
    with pytest.raises(SpecError, match="expected key=value"):
        apply_overrides(D0, ["channels"])


def test_numbers_that_yaml_reads_as_strings_are_numbers():
    # YAML 1.1 reads 1e-1 (no dot) as a string.
    assert apply_overrides(D0, ["backbone.drop_connect=1e-1"]).backbone.drop_connect == 0.1


def test_spec_file_with_a_base_preset(tmp_path):
    path = tmp_path / "spec.yaml"
    path.write_text("base: efficientdet-d0\nchannels: 96\nbackbone: {width: 1.1}\n")
    spec = load_spec(str(path))
    assert spec.channels == 96 and spec.backbone.width == 1.1 and spec.backbone.depth == 1.0
    assert load_spec("efficientdet-d1", ["resolution=768"]).resolution == 768


@pytest.mark.parametrize(
    "changes, message",
    [
        ({"resolution": 500}, r"resolution 500 must be divisible by 2\^max_level = 128"),
        ({"resolution": [384, 650]}, r"resolution \[384, 650\] must be divisible by 2\^max_level = 128 on each side \(height, width\) \(e.g. \[384, 640\]\)"),
        ({"resolution": [0, 640]}, r"resolution \[0, 640\] must be at least 1 on each side"),
        ({"resolution": [384, 640, 3]}, r"spec.resolution: expected an integer or a list of 2, got \[384, 640, 3\]"),
        ({"backbone": {"resolution": [16, 224]}}, r"resolution \[16, 224\] must be at least 32 on each side"),
        ({"fusion": "max"}, "fusion 'max' is not valid; valid values are sum, weighted, softmax, fast"),
        ({"feature_network": "hourglass"}, "feature_network 'hourglass' is not valid; valid values are fpn, panet, nasfpn, fcfpn, bifpn"),
        ({"feature_network": "nasfpn", "max_level": 6, "resolution": 512}, "NAS-FPN cell found for five levels"),
        ({"channels": "wide"}, r"spec.channels: expected an integer, got 'wide'"),
        ({"separable": "yes"}, "expected true or false"),
        ({"colour": "red"}, "unknown key.*'colour'.*valid keys are backbone, resolution"),
        ({"min_level": 0}, "min_level 0 must come from the backbone"),
        ({"max_level": 3}, "max_level 3 must be above min_level 3"),
        ({"backbone": {"stages": ["mb_r2_k4_s2_e6_c24"]}}, "kernel 4 must be odd"),
        ({"backbone": {"stages": ["conv3x3"]}}, "is not a stage string"),
        ({"backbone": {"width": -1.0}}, "width -1.0 must be positive"),
        ({"backbone": "efficientdet-d0"}, "is a detector preset, not a backbone"),
        ({"backbone": "efficientnet-b9"}, "unknown preset 'efficientnet-b9'; valid presets are"),
        ({"anchor_scale": float("inf")}, "spec.anchor_scale: expected a finite number"),
        ({"kind": ["detector"]}, "is not valid; valid kinds are backbone, detector"),
        ({1: 2, "colour": "red"}, "unknown key.*'1', 'colour'"),
    ],
)
def test_bad_specs_name_the_key_and_the_valid_values(changes, message):
    with pytest.raises(SpecError, match=message):
        spec_from_dict({**D0.to_dict(), **changes})


def test_bad_spec_file_names_the_file(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("kind: detector\nfusion: [oops\n")
    with pytest.raises(SpecError, match="bad.yaml: not valid UTF-8 YAML/JSON"):
        load_spec(str(path))
    path.write_text("kind: detector\nfusion: max\n")
    with pytest.raises(SpecError, match="bad.yaml: fusion 'max' is not valid"):
        load_spec(str(path))
    path.write_bytes(b"fusion: \xff\xfe\n")
    with pytest.raises(SpecError, match="bad.yaml: not valid UTF-8"):
        load_spec(str(path))
    with pytest.raises(SpecError, match="neither a preset nor a spec file"):
        load_spec(str(tmp_path / "missing.yaml"))


def test_stage_strings_parse():
    assert Stage.parse("mb_r2_k5_s2_e6_c40") == Stage(repeats=2, kernel=5, stride=2, expand=6, channels=40)
    with pytest.raises(SpecError, match="stride 3 must be 1 or 2"):
        Stage.parse("mb_r1_k3_s3_e6_c40")


def test_channel_rounding_matches_the_official_code():
    # Multiples of 8, never below 90 % of the target.
    assert round_channels(32, 1.0) == 32
    assert round_channels(32, 1.1) == 32  # 35.2 -> 32 (>= 0.9 * 35.2)
    assert round_channels(40, 1.4) == 56
    assert round_channels(1280, 1.8) == 2304
    assert round_channels(3, 1.0) == 8  # never below the divisor
    assert round_channels(64 * 1.35**2) == 120  # the heuristic's 116.6; the official table uses 112


def test_channel_rounding_bumps_when_rounding_loses_more_than_ten_percent():
    # 20.5 rounds to 24 (nearest multiple); 19.2 rounds to 16, which is below 0.9 * 19.2 = 17.28 -> 24.
    assert round_channels(19.2) == 24
    assert round_channels(12) == 16


def test_depth_rounds_up():
    assert [round_repeats(r, 1.1) for r in (1, 2, 3, 4)] == [2, 3, 4, 5]
    assert round_repeats(4, 3.1) == 13


def test_compound_scaling():
    m = compound_multipliers(1.2, 1.1, 1.15, 1)
    assert (m.depth, m.width, m.resolution) == pytest.approx((1.2, 1.1, 1.15))
    assert m.flops_factor == pytest.approx(1.92, abs=0.01)  # alpha·beta²·gamma² ≈ 2
    assert compound_multipliers(1.2, 1.1, 1.15, 3).depth == pytest.approx(1.728)
    assert 1.2 * 1.1**2 * gamma_for(1.2, 1.1) ** 2 == pytest.approx(2.0)
    assert 1.1 * 1.05**2 * gamma_for(1.1, 1.05, target=4.0) ** 2 == pytest.approx(4.0)  # 2^phi at phi = 2
    with pytest.raises(SpecError, match="alpha 0.9 must be at least 1"):
        compound_multipliers(0.9, 1.1, 1.1, 1)
    with pytest.raises(SpecError, match="gamma would be < 1"):
        gamma_for(1.5, 1.3)


def test_efficientdet_heuristic_and_where_the_official_table_departs_from_it():
    assert [efficientdet_heuristic(phi).resolution for phi in range(6)] == [512, 640, 768, 896, 1024, 1152]
    assert [efficientdet_heuristic(phi).feature_repeats for phi in range(7)] == [3, 4, 5, 6, 7, 8, 9]
    assert [efficientdet_heuristic(phi).head_repeats for phi in range(7)] == [3, 3, 3, 4, 4, 4, 5]
    assert [efficientdet_heuristic(phi).channels for phi in (0, 1, 3)] == [64, 88, 160]
    # The table keeps 112 / 224 channels, 7 repeats for D5 and D5 at 1280.
    assert PRESETS["efficientdet-d2"].channels == 112 != efficientdet_heuristic(2).channels
    assert PRESETS["efficientdet-d4"].channels == 224 != efficientdet_heuristic(4).channels
    assert PRESETS["efficientdet-d5"].resolution == 1280 != efficientdet_heuristic(5).resolution


def test_scale_detector_multiplies_and_snaps():
    scaled = scale_detector(D0, depth=1.2, width=1.1, resolution=1.15)
    assert scaled.backbone.depth == 1.2 and scaled.backbone.width == 1.1
    assert scaled.channels == 72 and scaled.feature_repeats == 4 and scaled.head_repeats == 4
    assert scaled.resolution == 640 and scaled.resolution % 128 == 0  # 588.8 snapped
    assert snap_resolution(10, 7) == 128
    assert scale_detector(D0) == D0
    # a rectangle scales on both sides, each snapped: 384·1.15 = 441.6 -> 384, 640·1.15 = 736 -> 768
    wide = scale_detector(D0.replace(resolution=[384, 640]), resolution=1.15)
    assert wide.resolution == wide.backbone.resolution == (384, 768)
    assert scale_detector(D0.replace(resolution=[384, 640]), resolution=1.34).resolution == (512, 896)  # 514.6, 857.6
    with pytest.raises(SpecError, match="width multiplier 0 must be positive"):
        scale_detector(D0, width=0)


def test_reference_padding_and_anchor_pairs_are_the_defaults_and_round_trip():
    spec = preset("efficientdet-d0")
    assert spec.padding == spec.backbone.padding == "same"
    assert spec.aspect_ratios == ((1.0, 1.0), (1.4, 0.7), (0.7, 1.4))
    again = spec_from_dict(yaml.safe_load(spec.to_yaml()))
    assert again == spec and again.spec_hash == spec.spec_hash
    mixed = apply_overrides(spec, ["aspect_ratios=[2.0, [1.4, 0.7]]", "padding=symmetric"])
    assert mixed.aspect_ratios == (2.0, (1.4, 0.7)) and mixed.num_anchors == 6 and mixed.backbone.padding == "symmetric"


@pytest.mark.parametrize(
    "changes, fragment",
    [
        (["padding=valid"], "padding 'valid' is not valid; valid values are same, symmetric"),
        (["aspect_ratios=[[1.0, 2.0, 3.0]]"], "aspect_ratios[0]: expected a number or a list of 2"),
        (["aspect_ratios=[[1.0, -1.0]]"], "must be a non-empty list of positive numbers"),
        (["aspect_ratios=[]"], "must be a non-empty list"),
    ],
)
def test_bad_padding_and_aspect_ratios_are_named(changes, fragment):
    with pytest.raises(SpecError) as error:
        apply_overrides(preset("efficientdet-d0"), changes)
    assert fragment in str(error.value)
