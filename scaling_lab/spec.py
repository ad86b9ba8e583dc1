"""The spec: a frozen, hashable, serializable description of a model, and the only thing
that flows through scaling-lab (search spaces sample specs, the builder builds them, the
measurer and trials key their results by their hash).

A backbone is a handful of global multipliers over a stage table; each stage is a short string
in the style of timm's EfficientNet builder, ``mb_r2_k3_s2_e6_c24`` = MBConv, 2 repeats,
kernel 3, stride 2 (first block), expansion 6, 24 output channels, before width/depth scaling.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import re
import types
import typing
from dataclasses import dataclass, field
from typing import Any, Mapping, Union

import yaml

from scaling_lab.errors import SpecError
from scaling_lab.graphs import feature_graph
from scaling_lab.resolution import Resolution, image_size, resolution_of, resolution_problem

ACTIVATIONS = ("swish", "relu", "relu6", "hard_swish", "gelu")
FUSIONS = ("sum", "weighted", "softmax", "fast")
FUSION_WEIGHTS = ("scalar", "channel", "pixel")
PADDINGS = ("same", "symmetric")
# The anchors of the official EfficientDet (and effdet's ports of its weights): (x, y) scale pairs.
REFERENCE_ASPECT_RATIOS = ((1.0, 1.0), (1.4, 0.7), (0.7, 1.4))
# An aspect ratio is a number r = width / height (x = sqrt(r), y = 1 / sqrt(r)) or an (x, y) pair.
AspectRatio = Union[float, tuple[float, float]]

B0_STAGES = (
    "mb_r1_k3_s1_e1_c16",
    "mb_r2_k3_s2_e6_c24",
    "mb_r2_k5_s2_e6_c40",
    "mb_r3_k3_s2_e6_c80",
    "mb_r3_k5_s1_e6_c112",
    "mb_r4_k5_s2_e6_c192",
    "mb_r1_k3_s1_e6_c320",
)

_STAGE_PATTERN = re.compile(r"^mb_r(\d+)_k(\d+)_s(\d+)_e(\d+)_c(\d+)$")


@dataclass(frozen=True)
class Stage:
    """One parsed stage string (unscaled)."""

    repeats: int
    kernel: int
    stride: int
    expand: int
    channels: int

    @classmethod
    def parse(cls, text: str) -> "Stage":
        match = _STAGE_PATTERN.match(text) if isinstance(text, str) else None
        if match is None:
            raise SpecError(
                f"stage {text!r} is not a stage string; expected the form "
                "'mb_r<repeats>_k<kernel>_s<stride>_e<expand>_c<channels>', e.g. 'mb_r2_k3_s2_e6_c24'"
            )
        stage = cls(*(int(group) for group in match.groups()))
        if stage.repeats < 1 or stage.expand < 1 or stage.channels < 1:
            raise SpecError(f"stage {text!r}: repeats, expansion and channels must be at least 1")
        if stage.kernel % 2 == 0:
            raise SpecError(f"stage {text!r}: kernel {stage.kernel} must be odd (1, 3, 5, 7, ...)")
        if stage.stride not in (1, 2):
            raise SpecError(f"stage {text!r}: stride {stage.stride} must be 1 or 2")
        return stage


class _SpecBase:
    """Validation, dict/JSON/YAML round trips and the content hash shared by both spec types."""

    kind: typing.ClassVar[str]

    def to_dict(self) -> dict[str, Any]:
        """The spec's fields; an unset optional field (``init: None``) is left out, so that it
        adds nothing to the hash or to a results table of specs without it."""
        out: dict[str, Any] = {"kind": self.kind}
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if value is None:
                continue
            if isinstance(value, _SpecBase):
                value = value.to_dict()
            elif isinstance(value, tuple):
                value = [list(item) if isinstance(item, tuple) else item for item in value]
            out[f.name] = value
        return out

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True)

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.to_dict(), sort_keys=False)

    @property
    def spec_hash(self) -> str:
        """A stable content hash: equal specs hash equal across processes and versions."""
        return hashlib.sha256(self.to_json().encode()).hexdigest()[:16]

    @property
    def input_size(self) -> tuple[int, int]:
        """(height, width) of the spec's input images."""
        return image_size(self.resolution)  # type: ignore[attr-defined]

    def replace(self, **changes: Any):
        """A copy with some fields changed, validated like any new spec."""
        return type(self).from_dict({**self.to_dict(), **changes})

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], where: str = "spec"):
        if not isinstance(data, Mapping):
            raise SpecError(f"{where}: expected a mapping of spec fields, got {type(data).__name__}")
        data = dict(data)
        kind = data.pop("kind", cls.kind)
        if not isinstance(kind, str) or kind != cls.kind:
            raise SpecError(f"{where}: kind {kind!r} where a {cls.kind!r} spec was expected")
        hints = typing.get_type_hints(cls)
        names = [f.name for f in dataclasses.fields(cls)]
        unknown = sorted(map(str, set(data) - set(names)))
        if unknown:
            raise SpecError(
                f"{where}: unknown key(s) {', '.join(map(repr, unknown))}; valid keys are {', '.join(names)}"
            )
        values = {name: coerce_field(f"{where}.{name}", value, hints[name]) for name, value in data.items()}
        return cls(**values)


def _as_number(value: Any) -> float | None:
    """A number, or a numeric string: YAML 1.1 reads ``1e-3`` (no dot) as a string."""
    if isinstance(value, bool):
        return None
    if isinstance(value, (int, float)):
        return float(value)
    if isinstance(value, str):
        try:
            return float(value)
        except ValueError:
            return None
    return None


def coerce_field(where: str, value: Any, hint: Any) -> Any:
    """Check one field's value against its annotation (``X | None`` included), converting lists
    to tuples; a wrong type is a ``SpecError`` naming ``where``."""
    if typing.get_origin(hint) in (Union, types.UnionType) and type(None) in typing.get_args(hint):
        if value is None:
            return None
        hint = next(arg for arg in typing.get_args(hint) if arg is not type(None))
    if typing.get_origin(hint) in (Union, types.UnionType):  # the first alternative that fits
        for alternative in typing.get_args(hint):
            try:
                return coerce_field(where, value, alternative)
            except SpecError:
                continue
        names = " or ".join(
            f"a list of {len(typing.get_args(arg))}" if typing.get_origin(arg) is tuple else {float: "a number", int: "an integer", str: "a string"}.get(arg, str(arg))
            for arg in typing.get_args(hint)
        )
        raise SpecError(f"{where}: expected {names}, got {value!r}")
    if hint is bool:
        if isinstance(value, bool):
            return value
        raise SpecError(f"{where}: expected true or false, got {value!r}")
    if hint is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
        raise SpecError(f"{where}: expected an integer, got {value!r}")
    if hint is float:
        number = _as_number(value)
        if number is None:
            raise SpecError(f"{where}: expected a number, got {value!r}")
        if not math.isfinite(number):
            raise SpecError(f"{where}: expected a finite number, got {value!r}")
        return number
    if hint is str:
        if isinstance(value, str):
            return value
        raise SpecError(f"{where}: expected a string, got {value!r}")
    if typing.get_origin(hint) is tuple:
        if isinstance(value, str) or not isinstance(value, (list, tuple)):
            raise SpecError(f"{where}: expected a list, got {value!r}")
        args = typing.get_args(hint)
        if len(args) != 2 or args[1] is not Ellipsis:  # a fixed-length tuple such as (x, y)
            if len(value) != len(args):
                raise SpecError(f"{where}: expected a list of {len(args)} items, got {value!r}")
            return tuple(coerce_field(f"{where}[{i}]", item, arg) for i, (item, arg) in enumerate(zip(value, args)))
        return tuple(coerce_field(f"{where}[{i}]", item, args[0]) for i, item in enumerate(value))
    if hint is BackboneSpec:
        if isinstance(value, BackboneSpec):
            return value
        if isinstance(value, str):
            found = preset(value)
            if not isinstance(found, BackboneSpec):
                raise SpecError(f"{where}: {value!r} is a detector preset, not a backbone")
            return found
        return BackboneSpec.from_dict(_resolve_base(value, where), where)
    raise TypeError(f"unsupported spec field type {hint!r}")  # a programming error, not bad input


def _check(condition: bool, message: str) -> None:
    if not condition:
        raise SpecError(message)


def _check_choice(name: str, value: str, choices: tuple[str, ...]) -> None:
    _check(value in choices, f"{name} {value!r} is not valid; valid values are {', '.join(choices)}")


def _settle_resolution(spec: Any, minimum: int, max_level: int | None = None) -> None:
    """Check a spec's resolution and keep a square one an int (``[512, 512]`` is ``512``: the
    serialization and hash of square specs do not depend on how they were written)."""
    if isinstance(spec.resolution, (tuple, list)):
        object.__setattr__(spec, "resolution", resolution_of(*image_size(spec.resolution)))
    problem = resolution_problem(spec.resolution, minimum, max_level)
    if problem:
        raise SpecError(problem)


@dataclass(frozen=True)
class BackboneSpec(_SpecBase):
    """An EfficientNet-style backbone (also a classifier: stem, MBConv stages, head, FC)."""

    kind: typing.ClassVar[str] = "backbone"

    width: float = 1.0
    depth: float = 1.0
    resolution: Resolution = 224  # [height, width] for a rectangle (see scaling_lab.resolution)
    stages: tuple[str, ...] = B0_STAGES
    stem_channels: int = 32
    head_channels: int = 1280
    se_ratio: float = 0.25
    dropout: float = 0.2
    drop_connect: float = 0.2
    activation: str = "swish"
    num_classes: int = 1000
    padding: str = "same"
    init: str | None = None

    def __post_init__(self) -> None:
        _check(self.width > 0, f"width {self.width} must be positive")
        _check(self.depth > 0, f"depth {self.depth} must be positive")
        _settle_resolution(self, minimum=32)
        _check(len(self.stages) > 0, "stages must list at least one stage string")
        self.parsed_stages  # validates every stage string
        _check(self.stem_channels >= 1 and self.head_channels >= 1, "stem/head channels must be at least 1")
        _check(0 <= self.se_ratio < 1, f"se_ratio {self.se_ratio} must be in [0, 1)")
        _check(0 <= self.dropout < 1, f"dropout {self.dropout} must be in [0, 1)")
        _check(0 <= self.drop_connect < 1, f"drop_connect {self.drop_connect} must be in [0, 1)")
        _check_choice("activation", self.activation, ACTIVATIONS)
        _check(self.num_classes >= 1, f"num_classes {self.num_classes} must be at least 1")
        _check_choice("padding", self.padding, PADDINGS)

    @property
    def parsed_stages(self) -> tuple[Stage, ...]:
        return tuple(Stage.parse(text) for text in self.stages)

    @property
    def feature_levels(self) -> dict[int, int]:
        """Pyramid level -> index of the last stage at that stride (the stem is level 1)."""
        levels: dict[int, int] = {}
        level = 1
        for index, stage in enumerate(self.parsed_stages):
            level += stage.stride == 2
            levels[level] = index
        return levels


@dataclass(frozen=True)
class DetectorSpec(_SpecBase):
    """An EfficientDet-style detector: backbone + feature network + shared class/box heads.

    The detector's ``resolution`` is the one the backbone runs at (the backbone spec's own
    resolution is set to it).
    """

    kind: typing.ClassVar[str] = "detector"

    backbone: BackboneSpec = field(default_factory=BackboneSpec)
    resolution: Resolution = 512  # [height, width] for a rectangle, each divisible by 2^max_level
    min_level: int = 3
    max_level: int = 7
    feature_network: str = "bifpn"
    fusion: str = "fast"
    fusion_weights: str = "scalar"
    channels: int = 64
    feature_repeats: int = 3
    head_repeats: int = 3
    separable: bool = True
    anchor_scale: float = 4.0
    num_scales: int = 3
    aspect_ratios: tuple[AspectRatio, ...] = REFERENCE_ASPECT_RATIOS
    num_classes: int = 90
    activation: str = "swish"
    padding: str = "same"
    init: str | None = None

    def __post_init__(self) -> None:
        _settle_resolution(self, minimum=1, max_level=self.max_level)
        if (self.backbone.resolution, self.backbone.padding) != (self.resolution, self.padding):
            object.__setattr__(self, "backbone", dataclasses.replace(self.backbone, resolution=self.resolution, padding=self.padding))
        backbone_levels = self.backbone.feature_levels
        lowest, highest = min(backbone_levels), max(backbone_levels)
        _check(
            lowest <= self.min_level <= highest,
            f"min_level {self.min_level} must come from the backbone: levels {lowest}..{highest} are available",
        )
        _check(self.max_level > self.min_level, f"max_level {self.max_level} must be above min_level {self.min_level}")
        _check_choice("fusion", self.fusion, FUSIONS)
        _check_choice("fusion_weights", self.fusion_weights, FUSION_WEIGHTS)
        _check_choice("activation", self.activation, ACTIVATIONS)
        _check(self.channels >= 1, f"channels {self.channels} must be at least 1")
        _check(self.feature_repeats >= 1, f"feature_repeats {self.feature_repeats} must be at least 1")
        _check(self.head_repeats >= 0, f"head_repeats {self.head_repeats} must be at least 0")
        _check(self.anchor_scale > 0, f"anchor_scale {self.anchor_scale} must be positive")
        _check(self.num_scales >= 1, f"num_scales {self.num_scales} must be at least 1")
        _check(
            len(self.aspect_ratios) >= 1 and all(min(_as_tuple(r)) > 0 for r in self.aspect_ratios),
            f"aspect_ratios {self.to_dict()['aspect_ratios']} must be a non-empty list of positive numbers "
            "(width / height) or [x, y] pairs of positive scales, e.g. [[1.0, 1.0], [1.4, 0.7], [0.7, 1.4]]",
        )
        _check_choice("padding", self.padding, PADDINGS)
        _check(self.num_classes >= 1, f"num_classes {self.num_classes} must be at least 1")
        feature_graph(self.feature_network, self.min_level, self.max_level)  # checks the name; NAS-FPN needs 5 levels

    @property
    def num_levels(self) -> int:
        return self.max_level - self.min_level + 1

    @property
    def num_anchors(self) -> int:
        return self.num_scales * len(self.aspect_ratios)


def _as_tuple(ratio: AspectRatio) -> tuple[float, ...]:
    return ratio if isinstance(ratio, tuple) else (ratio,)


def aspect_pair(ratio: AspectRatio) -> tuple[float, float]:
    """An anchor's (x, y) scale: a pair as given; a ratio r = width / height as (√r, 1/√r)."""
    if isinstance(ratio, tuple):
        return ratio
    return math.sqrt(ratio), 1 / math.sqrt(ratio)


Spec = Union[BackboneSpec, DetectorSpec]
SPEC_TYPES: dict[str, type] = {BackboneSpec.kind: BackboneSpec, DetectorSpec.kind: DetectorSpec}
# Named specs (``base: efficientdet-d0``), filled by ``scaling_lab.presets`` when the package is
# imported: presets are built from these classes, so this module names them without importing them.
PRESETS: dict[str, Spec] = {}


def preset(name: str) -> Spec:
    """A preset spec by name (``efficientnet-b0`` ... ``efficientdet-d7x``)."""
    try:
        return PRESETS[name]
    except (KeyError, TypeError):
        raise SpecError(f"unknown preset {name!r}; valid presets are {', '.join(PRESETS)}") from None


def _resolve_base(data: Any, where: str) -> Any:
    """Expand ``base: <preset>``: the preset's fields, overridden by the rest of the mapping."""
    if not isinstance(data, Mapping) or "base" not in data:
        return data
    rest = dict(data)
    base = preset(rest.pop("base"))
    return deep_merge(base.to_dict(), rest)


def deep_merge(base: Mapping[str, Any], changes: Mapping[str, Any]) -> dict[str, Any]:
    """``base`` updated by ``changes``, nested mappings merged key by key; a mapping that names a
    new ``base`` preset replaces the old one instead."""
    merged = dict(base)
    for key, value in changes.items():
        if isinstance(value, Mapping) and isinstance(merged.get(key), Mapping) and "base" not in value:
            merged[key] = deep_merge(merged[key], value)
        else:
            merged[key] = value
    return merged


def spec_from_dict(data: Mapping[str, Any], where: str = "spec") -> Spec:
    """Build a spec of either kind; ``kind`` picks it (a ``backbone`` key means a detector)."""
    data = _resolve_base(data, where)
    if not isinstance(data, Mapping):
        raise SpecError(f"{where}: expected a mapping of spec fields, got {type(data).__name__}")
    kind = data.get("kind", "detector" if "backbone" in data else "backbone")
    if not isinstance(kind, str) or kind not in SPEC_TYPES:
        raise SpecError(f"{where}: kind {kind!r} is not valid; valid kinds are {', '.join(SPEC_TYPES)}")
    return SPEC_TYPES[kind].from_dict(data, where)
