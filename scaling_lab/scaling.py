"""Scaling rules: the one place where channels and repeats are rounded.

- EfficientNet compound scaling: depth alpha^phi, width beta^phi, resolution gamma^phi.
- The EfficientDet heuristic: W = 64·1.35^phi, D_bifpn = 3 + phi, D_box = 3 + floor(phi/3),
  R = 512 + 128·phi. The official D0-D7x table departs from it in places (for instance 112 and
  224 channels where the formula gives 120 and 216 after rounding, D5 at 1280); the presets keep the table's values.
- Fast compound scaling (Dollár, Singh and Girshick, CVPR 2021): depth, width and resolution
  grow as s^e_d, s^e_w, s^e_r with e_d + 2·e_w + 2·e_r = 1, set by the width's share a of the
  FLOPs growth: e_w = a/2, e_d = (1 - a)/2, e_r = (1 - a)/4 (a = 1: width only; a = 1/3: uniform
  compound scaling; their recommended a = 0.8: e_d 0.1, e_w 0.4, e_r 0.05, pycls's "d1_w8_r1").
- ``scale_detector``: multiply a detector spec's depth, width and resolution, as searches do.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from scaling_lab.errors import SpecError
from scaling_lab.resolution import Resolution, scaled, snapped
from scaling_lab.spec import BackboneSpec, DetectorSpec

CHANNEL_DIVISOR = 8


def round_channels(channels: float, width: float = 1.0, divisor: int = CHANNEL_DIVISOR) -> int:
    """Scale channels by ``width`` and round to a multiple of ``divisor`` as the official code
    does: nearest multiple, at least ``divisor``, bumped up once if that lost more than 10 %."""
    target = channels * width
    rounded = max(divisor, int(target + divisor / 2) // divisor * divisor)
    if rounded < 0.9 * target:
        rounded += divisor
    return int(rounded)


def round_repeats(repeats: int, depth: float = 1.0) -> int:
    """Scale a repeat count by ``depth``, rounding up (the official code's ceil)."""
    return int(math.ceil(depth * repeats))


def snap_resolution(resolution: float | tuple[float, float], max_level: int) -> Resolution:
    """Each side to the nearest multiple of 2^max_level (halves up; at least one), so every
    pyramid level divides evenly."""
    return snapped(resolution, 2**max_level)


@dataclass(frozen=True)
class Multipliers:
    depth: float
    width: float
    resolution: float

    @property
    def flops_factor(self) -> float:
        """FLOPs grow about depth · width² · resolution²."""
        return self.depth * self.width**2 * self.resolution**2


def compound_multipliers(alpha: float, beta: float, gamma: float, phi: float) -> Multipliers:
    """EfficientNet compound scaling: depth alpha^phi, width beta^phi, resolution gamma^phi."""
    for name, value in (("alpha", alpha), ("beta", beta), ("gamma", gamma)):
        if value < 1:
            raise SpecError(f"{name} {value} must be at least 1 (the paper's constraint alpha, beta, gamma >= 1)")
    return Multipliers(depth=alpha**phi, width=beta**phi, resolution=gamma**phi)


def gamma_for(alpha: float, beta: float, target: float = 2.0) -> float:
    """Solve alpha·beta²·gamma² = target for gamma."""
    gamma_squared = target / (alpha * beta**2)
    if gamma_squared < 1:
        raise SpecError(f"alpha {alpha} and beta {beta} already exceed alpha·beta² = {target}; gamma would be < 1")
    return math.sqrt(gamma_squared)


FAST_WIDTH_SHARE = 0.8  # Dollár et al.'s recommended alpha (their Table 4)


@dataclass(frozen=True)
class ScalingExponents:
    """How depth, width and resolution grow with a FLOPs factor s: s^depth, s^width, s^resolution."""

    depth: float
    width: float
    resolution: float

    def coefficients(self, target: float = 2.0) -> dict[str, float]:
        """The compound coefficients that multiply FLOPs by ``target`` per phi (alpha = target^e_d, ...)."""
        return {"alpha": target**self.depth, "beta": target**self.width, "gamma": target**self.resolution}


def fast_compound_exponents(width_share: float = FAST_WIDTH_SHARE) -> ScalingExponents:
    """Dollár et al.'s fast compound scaling: the width takes ``width_share`` of the FLOPs growth,
    depth and resolution split the rest equally (e_d + 2·e_w + 2·e_r = 1)."""
    if not 0 <= width_share <= 1:
        raise SpecError(f"width_share {width_share} must be in [0, 1] (1: width only; 1/3: uniform compound scaling; 0.8: the paper's fast scaling)")
    return ScalingExponents(depth=(1 - width_share) / 2, width=width_share / 2, resolution=(1 - width_share) / 4)


def scale_backbone(base: BackboneSpec, multipliers: Multipliers) -> BackboneSpec:
    """A backbone with depth and width multiplied and resolution scaled (each side rounded to an integer)."""
    return base.replace(
        depth=round(base.depth * multipliers.depth, 6),
        width=round(base.width * multipliers.width, 6),
        resolution=snapped(scaled(base.resolution, multipliers.resolution), 1),
    )


@dataclass(frozen=True)
class EfficientDetScale:
    channels: int
    feature_repeats: int
    head_repeats: int
    resolution: int


def efficientdet_heuristic(phi: int) -> EfficientDetScale:
    """The EfficientDet paper's equations 1-3 (channels rounded as everywhere else)."""
    if phi < 0:
        raise SpecError(f"phi {phi} must be at least 0")
    return EfficientDetScale(
        channels=round_channels(64 * 1.35**phi),
        feature_repeats=3 + phi,
        head_repeats=3 + phi // 3,
        resolution=512 + 128 * phi,
    )


def scale_detector(base: DetectorSpec, depth: float = 1.0, width: float = 1.0, resolution: float = 1.0) -> DetectorSpec:
    """Multiply a detector's depth (backbone depth, feature and head repeats), width (backbone
    width, feature channels) and resolution (both sides of a rectangle, each snapped to a multiple
    of 2^max_level)."""
    for name, value in (("depth", depth), ("width", width), ("resolution", resolution)):
        if value <= 0:
            raise SpecError(f"{name} multiplier {value} must be positive")
    backbone = base.backbone.replace(
        depth=round(base.backbone.depth * depth, 6), width=round(base.backbone.width * width, 6)
    )
    return base.replace(
        backbone=backbone.to_dict(),
        resolution=snap_resolution(scaled(base.resolution, resolution), base.max_level),
        channels=round_channels(base.channels, width),
        feature_repeats=round_repeats(base.feature_repeats, depth),
        head_repeats=round_repeats(base.head_repeats, depth),
    )
