"""The official EfficientNet-B0..B7 and EfficientDet-D0..D7x configurations as specs.

The EfficientDet rows keep the official table's values where it departs from the paper's
heuristic (see ``scaling.efficientdet_heuristic``): D2 112 and D4 224 channels, D5 at 1280,
D5/D6 repeats; D6, D7 and D7x fuse by plain sum, D7 keeps the B6 backbone with anchor scale 5,
D7x goes up to P8.
"""

from __future__ import annotations

from scaling_lab.spec import PRESETS, BackboneSpec, DetectorSpec, preset

# name: (width, depth, resolution, dropout)
_EFFICIENTNET = {
    "b0": (1.0, 1.0, 224, 0.2),
    "b1": (1.0, 1.1, 240, 0.2),
    "b2": (1.1, 1.2, 260, 0.3),
    "b3": (1.2, 1.4, 300, 0.3),
    "b4": (1.4, 1.8, 380, 0.4),
    "b5": (1.6, 2.2, 456, 0.4),
    "b6": (1.8, 2.6, 528, 0.5),
    "b7": (2.0, 3.1, 600, 0.5),
}

# name: (backbone, resolution, channels, feature repeats, head repeats, fusion, anchor scale, max level)
_EFFICIENTDET = {
    "d0": ("b0", 512, 64, 3, 3, "fast", 4.0, 7),
    "d1": ("b1", 640, 88, 4, 3, "fast", 4.0, 7),
    "d2": ("b2", 768, 112, 5, 3, "fast", 4.0, 7),
    "d3": ("b3", 896, 160, 6, 4, "fast", 4.0, 7),
    "d4": ("b4", 1024, 224, 7, 4, "fast", 4.0, 7),
    "d5": ("b5", 1280, 288, 7, 4, "fast", 4.0, 7),
    "d6": ("b6", 1280, 384, 8, 5, "sum", 4.0, 7),
    "d7": ("b6", 1536, 384, 8, 5, "sum", 5.0, 7),
    "d7x": ("b7", 1536, 384, 8, 5, "sum", 4.0, 8),
}


def _efficientnet(name: str) -> BackboneSpec:
    width, depth, resolution, dropout = _EFFICIENTNET[name]
    return BackboneSpec(width=width, depth=depth, resolution=resolution, dropout=dropout)


def _efficientdet(name: str) -> DetectorSpec:
    backbone, resolution, channels, repeats, head_repeats, fusion, anchor_scale, max_level = _EFFICIENTDET[name]
    return DetectorSpec(
        backbone=_efficientnet(backbone),
        resolution=resolution,
        max_level=max_level,
        fusion=fusion,
        channels=channels,
        feature_repeats=repeats,
        head_repeats=head_repeats,
        anchor_scale=anchor_scale,
    )


PRESETS.update(
    {
        **{f"efficientnet-{name}": _efficientnet(name) for name in _EFFICIENTNET},
        **{f"efficientdet-{name}": _efficientdet(name) for name in _EFFICIENTDET},
    }
)

__all__ = ["PRESETS", "preset"]
