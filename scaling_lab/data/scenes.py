"""Drawing synthetic scenes: filled shapes (circle, square, triangle, cross, ring, star) of random
colour, rotation and slight stretch on a textured, graded background with distractors and
pixel noise, each object kept at least ``1 - max_occlusion`` visible and contrasting with what
lies under it. Pure functions of a numpy generator: the same generator draws the same pixels.
"""

from __future__ import annotations

import math

import numpy as np
from PIL import Image, ImageDraw

SHAPES = ("circle", "square", "triangle", "cross", "ring", "star")
_SUPERSAMPLE = 2  # shapes are drawn at 2x and averaged down: anti-aliased edges
_PLACEMENT_TRIES = 20
_MIN_CONTRAST = 60.0  # RGB distance between an object's colour and the background under it


def _unit_polygons(shape: str, rng: np.random.Generator) -> list[np.ndarray]:
    """The shape as polygons inside the unit circle; the second one of a ring is its hole."""
    def circle(radius: float) -> np.ndarray:
        angles = np.linspace(0, 2 * np.pi, 48, endpoint=False)
        return radius * np.stack([np.cos(angles), np.sin(angles)], 1)

    if shape == "circle":
        return [circle(1.0)]
    if shape == "ring":
        return [circle(1.0), circle(rng.uniform(0.45, 0.65))]
    if shape == "square":
        return [np.array([[-1, -1], [1, -1], [1, 1], [-1, 1]]) / math.sqrt(2)]
    if shape == "triangle":
        angles = np.pi / 2 + np.arange(3) * 2 * np.pi / 3
        return [np.stack([np.cos(angles), np.sin(angles)], 1)]
    if shape == "cross":
        arm, length = 0.28, 0.96
        quarter = np.array([[arm, length], [arm, arm], [length, arm]])
        quarter_turn = np.array([[0, -1], [1, 0]])  # row vectors: (x, y) -> (y, -x)
        return [np.concatenate([quarter @ np.linalg.matrix_power(quarter_turn, k) for k in range(4)])]
    if shape == "star":
        angles = np.pi / 2 + np.arange(10) * np.pi / 5
        radii = np.where(np.arange(10) % 2 == 0, 1.0, 0.42)
        return [radii[:, None] * np.stack([np.cos(angles), np.sin(angles)], 1)]
    raise AssertionError(shape)


def _render_shape(shape: int, diameter: float, rng: np.random.Generator) -> np.ndarray:
    """Anti-aliased coverage in [0, 1], float32 [n, n], of a randomly rotated and slightly
    stretched shape whose circumscribed circle has the given diameter, centred in the array."""
    side = int(math.ceil(diameter * 1.2)) + 2
    angle, stretch = rng.uniform(0, 2 * np.pi), math.exp(rng.uniform(-0.15, 0.15))
    rotation = np.array([[math.cos(angle), -math.sin(angle)], [math.sin(angle), math.cos(angle)]])
    linear = np.diag([stretch, 1 / stretch]) @ rotation.T * (diameter / 2 * _SUPERSAMPLE)
    canvas = Image.new("L", (side * _SUPERSAMPLE, side * _SUPERSAMPLE), 0)
    draw = ImageDraw.Draw(canvas)
    for fill, polygon in zip((255, 0), _unit_polygons(SHAPES[shape], rng)):
        points = polygon @ linear + side * _SUPERSAMPLE / 2
        draw.polygon([tuple(point) for point in points], fill=fill)
    return np.asarray(canvas.reduce(_SUPERSAMPLE), dtype=np.float32) / 255


def _background(rng: np.random.Generator, width: int, height: int) -> Image.Image:
    """A smooth colour gradient plus a mid-frequency texture."""
    gradient = Image.fromarray(rng.uniform(30, 225, (3, 3, 3)).astype(np.uint8)).resize((width, height), Image.BICUBIC)
    grain = max(4, min(width, height) // int(rng.integers(8, 40)))
    texture = rng.normal(0, rng.uniform(4, 18), (height // grain + 2, width // grain + 2, 1))
    texture = Image.fromarray(np.clip(128 + texture.repeat(3, 2), 0, 255).astype(np.uint8))
    texture = np.asarray(texture.resize((width, height), Image.BILINEAR), dtype=np.float32) - 128
    return Image.fromarray(np.clip(np.asarray(gradient, dtype=np.float32) + texture, 0, 255).astype(np.uint8))


def _draw_clutter(image: Image.Image, rng: np.random.Generator, clutter: float) -> None:
    """Distractors that are not objects: lines, thin bars, arcs and clusters of tiny dots."""
    draw = ImageDraw.Draw(image)
    width, height = image.size
    short = min(width, height)

    def color() -> tuple[int, ...]:
        return tuple(int(value) for value in rng.integers(0, 256, 3))

    for _ in range(rng.poisson(8 * clutter)):
        kind = rng.integers(4)
        x, y = rng.uniform(0, width), rng.uniform(0, height)
        if kind == 0:
            end = (rng.uniform(0, width), rng.uniform(0, height))
            draw.line([(x, y), end], fill=color(), width=int(rng.integers(1, 4)))
        elif kind == 1:
            length, angle = rng.uniform(0.1, 0.5) * short, rng.uniform(0, np.pi)
            thickness = length / rng.uniform(5, 10)
            along, across = np.array([math.cos(angle), math.sin(angle)]), np.array([-math.sin(angle), math.cos(angle)])
            corners = [(x, y) + a * along * length / 2 + b * across * thickness / 2 for a, b in ((-1, -1), (1, -1), (1, 1), (-1, 1))]
            draw.polygon([tuple(corner) for corner in corners], fill=color())
        elif kind == 2:
            radius = rng.uniform(0.05, 0.4) * short
            start = rng.uniform(0, 360)
            draw.arc([x - radius, y - radius, x + radius, y + radius], start, start + rng.uniform(60, 270), color(), int(rng.integers(1, 3)))
        else:
            for dx, dy in rng.normal(0, 0.04 * short, (int(rng.integers(5, 16)), 2)):
                radius = rng.uniform(0.6, 1.6)
                draw.ellipse([x + dx - radius, y + dy - radius, x + dx + radius, y + dy + radius], fill=color())


def draw_scene(
    rng: np.random.Generator,
    width: int,
    height: int,
    requested: list[tuple[int, float]],
    noise: float,
    clutter: float,
    max_occlusion: float,
    center_margin: float,
) -> tuple[np.ndarray, list[tuple[int, tuple[int, int, int, int], int]]]:
    """Pixels (uint8 [H, W, 3]) and the placed objects as (shape, xyxy box, visible area).

    Objects are placed largest first; a placement is retried elsewhere when it would leave this
    or an earlier object less than ``1 - max_occlusion`` visible, and skipped after a few tries.
    Boxes are the full shape's extent, clipped to the image.
    """
    background = _background(rng, width, height)
    _draw_clutter(background, rng, clutter)
    pixels = np.asarray(background, dtype=np.float32).copy()
    owner = np.full((height, width), -1, dtype=np.int32)
    boxes, full_areas, visible = [], [], []
    shapes = []
    for shape, diameter in sorted(requested, key=lambda item: -item[1]):
        coverage = _render_shape(shape, diameter, rng)
        side = coverage.shape[0]
        for _ in range(_PLACEMENT_TRIES):
            center_x = rng.uniform(center_margin, 1 - center_margin) * width
            center_y = rng.uniform(center_margin, 1 - center_margin) * height
            left, top = int(round(center_x - side / 2)), int(round(center_y - side / 2))
            x1, y1, x2, y2 = max(left, 0), max(top, 0), min(left + side, width), min(top + side, height)
            if x2 <= x1 or y2 <= y1:
                continue
            local = coverage[y1 - top : y2 - top, x1 - left : x2 - left]
            solid = local > 0.5
            if solid.sum() < (1 - max_occlusion) * (coverage > 0.5).sum() or not solid.any():
                continue
            hidden = np.bincount(owner[y1:y2, x1:x2][solid] + 1, minlength=len(shapes) + 1)[1:]
            if any(visible[j] - hidden[j] < (1 - max_occlusion) * full_areas[j] for j in np.flatnonzero(hidden)):
                continue
            rows, columns = np.flatnonzero(solid.any(1)), np.flatnonzero(solid.any(0))
            region = pixels[y1:y2, x1:x2]
            color = _contrasting_color(rng, region[solid].mean(0))
            region += local[..., None] * (color - region)
            owner[y1:y2, x1:x2][solid] = len(shapes)
            for j in np.flatnonzero(hidden):
                visible[j] -= int(hidden[j])
            boxes.append((x1 + int(columns[0]), y1 + int(rows[0]), x1 + int(columns[-1]) + 1, y1 + int(rows[-1]) + 1))
            full_areas.append(int(solid.sum()))
            visible.append(int(solid.sum()))
            shapes.append(shape)
            break
    pixels += rng.normal(0, noise * 255, pixels.shape)
    objects = [(shape, box, area) for shape, box, area in zip(shapes, boxes, visible)]
    return np.clip(pixels, 0, 255).astype(np.uint8), objects


def _contrasting_color(rng: np.random.Generator, background: np.ndarray) -> np.ndarray:
    for _ in range(10):
        color = rng.uniform(0, 255, 3).astype(np.float32)
        if np.linalg.norm(color - background) >= _MIN_CONTRAST:
            break
    return color
