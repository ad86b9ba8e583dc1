"""Input resolutions: one side for a square input, or ``(height, width)`` for a rectangle.

A spec's ``resolution`` is an int for a square input and a ``[height, width]`` pair only when the
sides differ (``[512, 512]`` is read as ``512``), so a square spec serializes and hashes as it did
before rectangles existed. Everything else asks :func:`image_size` for the two sides.
"""

from __future__ import annotations

import math
from typing import Union

# An int for a square input, (height, width) for a rectangle (as the official code's image sizes).
Resolution = Union[int, tuple[int, int]]


def image_size(resolution: Resolution) -> tuple[int, int]:
    """(height, width) of an input of this resolution."""
    return (resolution, resolution) if not isinstance(resolution, (tuple, list)) else (resolution[0], resolution[1])


def resolution_of(height: int, width: int) -> Resolution:
    """The resolution of a ``height`` x ``width`` input: one int when square."""
    return height if height == width else (height, width)


def resolution_text(resolution: Resolution) -> str:
    """``512``, or ``384x640`` (height x width) for a rectangle."""
    height, width = image_size(resolution)
    return str(height) if height == width else f"{height}x{width}"


def nearest_multiple(value: float, multiple: int) -> int:
    """``value`` rounded to the nearest multiple of ``multiple``, halves up (576 and 704 both
    go up to 640 and 768 at 128), the one rounding of resolutions everywhere."""
    return math.floor(value / multiple + 0.5 + 1e-9) * multiple  # 1e-9: a half reached through float error is a half


def snapped(resolution: float | tuple[float, float], multiple: int) -> Resolution:
    """Each side rounded to the nearest multiple of ``multiple`` (at least one multiple)."""
    return resolution_of(*(max(multiple, nearest_multiple(side, multiple)) for side in image_size(resolution)))


def scaled(resolution: Resolution, factor: float) -> tuple[float, float]:
    """Both sides multiplied by ``factor`` (compound scaling keeps a rectangle's aspect)."""
    return tuple(side * factor for side in image_size(resolution))  # type: ignore[return-value]


def resolution_problem(resolution: Resolution, minimum: int = 1, max_level: int | None = None) -> str | None:
    """Why ``resolution`` is not valid where every side must be at least ``minimum`` (and
    divisible by 2^``max_level``, so that every pyramid level divides evenly), with a valid
    example, or None."""
    rectangle = isinstance(resolution, tuple)
    shown = list(resolution) if rectangle else resolution
    sides = image_size(resolution)
    if min(sides) < minimum:
        return f"resolution {shown} must be at least {minimum}{' on each side (height, width)' if rectangle else ''}"
    stride = 2**max_level if max_level is not None else 1
    if any(side % stride for side in sides):
        example = [max(stride, nearest_multiple(side, stride)) for side in sides]
        return (
            f"resolution {shown} must be divisible by 2^max_level = {stride}{' on each side (height, width)' if rectangle else ''} "
            f"(e.g. {example if rectangle else example[0]})"
        )
    return None
