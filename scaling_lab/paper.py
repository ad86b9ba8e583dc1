"""The published figures scaling-lab compares itself with, as data.

From the EfficientNet paper (Tan & Le, ICML 2019, arXiv 1905.11946 v5) and the EfficientDet
paper (Tan, Pang & Le, CVPR 2020, arXiv 1911.09070 v7). FLOPs are multiply-adds, as in both
papers; AP and top-1 are percentages, as printed.
"""

from __future__ import annotations

from dataclasses import dataclass

EFFICIENTNET_URL = "https://arxiv.org/abs/1905.11946"
EFFICIENTDET_URL = "https://arxiv.org/abs/1911.09070"


@dataclass(frozen=True)
class EfficientNetRow:
    name: str
    width: float
    depth: float
    resolution: int
    dropout: float
    params: float
    flops: float
    top1: float


@dataclass(frozen=True)
class EfficientDetRow:
    name: str
    resolution: int
    backbone: str
    channels: int
    feature_repeats: int
    head_repeats: int
    notes: str
    params: float
    flops: float
    ap_test_dev: float
    ap_val: float


@dataclass(frozen=True)
class FeatureNetworkRow:
    """One row of EfficientDet Table 5, keyed by our spec's ``feature_network`` and ``fusion``."""

    name: str
    feature_network: str
    fusion: str
    ap: float
    params_ratio: float
    flops_ratio: float


@dataclass(frozen=True)
class FusionRow:
    """One row of EfficientDet Table 6: softmax vs fast normalized fusion on the same model."""

    model: str
    softmax_ap: float
    fast_ap: float
    speedup: float


@dataclass(frozen=True)
class SingleDimensionRow:
    """One row of EfficientNet Table 7: scaling B0 along one dimension or all (compound)."""

    group: str
    scaling: str
    flops: float
    top1: float


EFFICIENTNET = (
    EfficientNetRow("B0", 1.0, 1.0, 224, 0.2, 5.3e6, 0.39e9, 77.1),
    EfficientNetRow("B1", 1.0, 1.1, 240, 0.2, 7.8e6, 0.70e9, 79.1),
    EfficientNetRow("B2", 1.1, 1.2, 260, 0.3, 9.2e6, 1.0e9, 80.1),
    EfficientNetRow("B3", 1.2, 1.4, 300, 0.3, 12e6, 1.8e9, 81.6),
    EfficientNetRow("B4", 1.4, 1.8, 380, 0.4, 19e6, 4.2e9, 82.9),
    EfficientNetRow("B5", 1.6, 2.2, 456, 0.4, 30e6, 9.9e9, 83.6),
    EfficientNetRow("B6", 1.8, 2.6, 528, 0.5, 43e6, 19e9, 84.0),
    EfficientNetRow("B7", 2.0, 3.1, 600, 0.5, 66e6, 37e9, 84.3),
)

EFFICIENTDET = (
    EfficientDetRow("D0", 512, "B0", 64, 3, 3, "", 3.9e6, 2.5e9, 34.6, 34.3),
    EfficientDetRow("D1", 640, "B1", 88, 4, 3, "", 6.6e6, 6.1e9, 40.5, 40.2),
    EfficientDetRow("D2", 768, "B2", 112, 5, 3, "", 8.1e6, 11e9, 43.9, 43.5),
    EfficientDetRow("D3", 896, "B3", 160, 6, 4, "", 12e6, 25e9, 47.2, 46.8),
    EfficientDetRow("D4", 1024, "B4", 224, 7, 4, "", 21e6, 55e9, 49.7, 49.3),
    EfficientDetRow("D5", 1280, "B5", 288, 7, 4, "", 34e6, 135e9, 51.5, 51.3),
    EfficientDetRow("D6", 1280, "B6", 384, 8, 5, "sum fusion", 52e6, 226e9, 52.6, 52.2),
    EfficientDetRow("D7", 1536, "B6", 384, 8, 5, "sum fusion, anchor scale 5", 52e6, 325e9, 53.7, 53.4),
    EfficientDetRow("D7x", 1536, "B7", 384, 8, 5, "sum fusion, levels P3-P8", 77e6, 410e9, 55.1, 54.4),
)

# EfficientDet Table 5: same backbone, repeated blocks, separable convs; ratios to repeated FPN.
FEATURE_NETWORKS = (
    FeatureNetworkRow("repeated top-down FPN", "fpn", "sum", 42.29, 1.0, 1.0),
    FeatureNetworkRow("repeated FPN+PANet", "panet", "sum", 44.08, 1.0, 1.0),
    FeatureNetworkRow("NAS-FPN", "nasfpn", "sum", 43.16, 0.71, 0.72),
    FeatureNetworkRow("fully-connected FPN", "fcfpn", "sum", 43.06, 1.24, 1.21),
    FeatureNetworkRow("BiFPN, unweighted", "bifpn", "sum", 43.94, 0.88, 0.67),
    FeatureNetworkRow("BiFPN, weighted", "bifpn", "fast", 44.39, 0.88, 0.68),
)
FEATURE_NETWORK_BASELINE = "fpn"

# EfficientDet Table 6: fast fusion's speedup over softmax fusion on GPU.
FUSIONS = (
    FusionRow("Model1", 33.96, 33.85, 1.28),
    FusionRow("Model2", 43.78, 43.77, 1.26),
    FusionRow("Model3", 48.79, 48.74, 1.31),
)

# EfficientNet Table 7, B0 scaled along one dimension at a time or compounded.
SINGLE_DIMENSION_SCALING = (
    SingleDimensionRow("baseline", "EfficientNet-B0", 0.4e9, 77.3),
    SingleDimensionRow("depth", "depth d=4", 1.8e9, 79.0),
    SingleDimensionRow("width", "width w=2", 1.8e9, 78.9),
    SingleDimensionRow("resolution", "resolution r=2", 1.9e9, 79.1),
    SingleDimensionRow("compound", "compound d=1.4, w=1.2, r=1.3", 1.8e9, 81.1),
)

# EfficientNet's grid search at phi = 1 under alpha * beta^2 * gamma^2 ≈ 2.
COMPOUND_COEFFICIENTS = {"alpha": 1.2, "beta": 1.1, "gamma": 1.15}
COMPOUND_FLOPS_BASE = 2.0


def feature_network_row(feature_network: str, fusion: str) -> FeatureNetworkRow | None:
    """The Table 5 row for one of our (feature_network, fusion) settings, if the paper has one.

    The paper's non-BiFPN networks sum their inputs, so only 'sum' matches them (an FPN with
    fast fusion is not the paper's FPN); BiFPN rows differ by fusion ('sum' = unweighted,
    'fast' = weighted).
    """
    for row in FEATURE_NETWORKS:
        if row.feature_network == feature_network and row.fusion == fusion:
            return row
    return None


# The official code's exact parameter counts (1000 classes for EfficientNet; 90 classes and
# 9 anchors for EfficientDet; D6 and D7 fuse by plain sum, so they carry no fusion weights) and
# its exact detector FLOPs at each model's own resolution.
OFFICIAL_PARAMS = {
    "efficientnet-b0": 5_288_548,
    "efficientnet-b1": 7_794_184,
    "efficientnet-b2": 9_109_994,
    "efficientnet-b3": 12_233_232,
    "efficientnet-b4": 19_341_616,
    "efficientnet-b5": 30_389_784,
    "efficientnet-b6": 43_040_704,
    "efficientnet-b7": 66_347_960,
    "efficientdet-d0": 3_880_067,
    "efficientdet-d1": 6_625_898,
    "efficientdet-d2": 8_097_039,
    "efficientdet-d3": 12_032_296,
    "efficientdet-d4": 20_723_675,
    "efficientdet-d5": 33_653_315,
    "efficientdet-d6": 51_871_782,
    "efficientdet-d7": 51_871_782,
    "efficientdet-d7x": 77_147_166,
}
OFFICIAL_FLOPS = {
    "efficientdet-d0": 2.5506e9,
    "efficientdet-d1": 6.1338e9,
    "efficientdet-d2": 11.046e9,
    "efficientdet-d3": 24.983e9,
    "efficientdet-d4": 55.347e9,
    "efficientdet-d5": 135.73e9,
    "efficientdet-d6": 226.03e9,
    "efficientdet-d7": 325.47e9,
}


def paper_row(preset_name: str) -> EfficientNetRow | EfficientDetRow:
    """The paper's table row for a preset name such as ``efficientdet-d7x``."""
    short = preset_name.split("-")[-1].upper().replace("X", "x")
    rows = EFFICIENTNET if preset_name.startswith("efficientnet") else EFFICIENTDET
    return next(row for row in rows if row.name == short)
