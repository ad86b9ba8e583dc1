"""Specs from files and the command line: a preset name or a YAML/JSON spec file, and
``--set key=value`` changes applied over a spec (``scaling_lab.spec`` holds the spec types)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from scaling_lab.documents import DocumentError, read_document
from scaling_lab.errors import SpecError
from scaling_lab.spec import PRESETS, Spec, deep_merge, preset, spec_from_dict


def parse_overrides(assignments: list[str] | tuple[str, ...]) -> dict[str, Any]:
    """``["backbone.width=1.2", "fusion=softmax"]`` -> a nested dict; values are parsed as YAML."""
    nested: dict[str, Any] = {}
    for assignment in assignments:
        key, sep, raw = assignment.partition("=")
        if not sep or not key.strip():
            raise SpecError(f"--set {assignment!r}: expected key=value, e.g. --set channels=88")
        try:
            value = yaml.safe_load(raw) if raw.strip() else raw
        except yaml.YAMLError:
            value = raw
        target = nested
        parts = key.strip().split(".")
        for part in parts[:-1]:
            target = target.setdefault(part, {})
            if not isinstance(target, dict):
                raise SpecError(f"--set {assignment!r}: {part!r} is set both as a value and as a mapping")
        target[parts[-1]] = value
    return nested


def apply_overrides(spec: Spec, assignments: list[str] | tuple[str, ...]) -> Spec:
    """A copy of ``spec`` with ``--set key=value`` changes applied and validated."""
    if not assignments:
        return spec
    return spec_from_dict(deep_merge(spec.to_dict(), parse_overrides(assignments)), "--set")


def read_yaml(path: Path) -> Any:
    """A YAML (or JSON) file's content, read within ``scaling_lab.documents``' limits; unreadable,
    non-UTF-8, invalid or over-limit files name the file."""
    try:
        return read_document(path)
    except DocumentError as exc:
        raise SpecError(str(exc)) from None


def load_spec(name_or_path: str, overrides: list[str] | tuple[str, ...] = ()) -> Spec:
    """A preset name (``efficientdet-d0``) or a YAML/JSON spec file, with optional overrides."""
    if name_or_path in PRESETS:
        return apply_overrides(preset(name_or_path), overrides)
    path = Path(name_or_path)
    if not path.is_file():
        raise SpecError(
            f"{name_or_path!r} is neither a preset nor a spec file; presets are {', '.join(PRESETS)} "
            "(or give the path of a .yaml/.json spec file)"
        )
    data = read_yaml(path)
    try:
        return apply_overrides(spec_from_dict(data, str(path)), overrides)
    except SpecError as exc:
        message = str(exc)
        raise SpecError(message if message.startswith(str(path)) else f"{path}: {message}") from None
