"""Synthetic shape datasets, generated on first use and cached: no download needed.

Detection scenes hold filled shapes (drawn by ``scenes``) with sizes spread log-uniformly from a
few pixels to most of the image, so small objects need input resolution and large ones need
receptive field. Objects may overlap (each stays at least ``1 - max_occlusion`` visible) and be
cut by the image border. Background colour gradients, texture, distractors that are not objects
(lines, bars, arcs, dot clusters) and pixel noise keep the task from being trivial.
Classification images hold one dominant shape on the same kind of background.

Every image is drawn from its own generator seeded by (seed, split, index), so a seed always
gives the same pixels. Datasets live under ``$SCALING_LAB_CACHE`` (default
``~/.cache/scaling-lab``) in a folder named by a hash of the parameters, and are written to a
temporary folder renamed into place at the end: an interrupted generation never leaves a folder
that looks complete.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import math
import multiprocessing
import os
import shutil
import tempfile
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
from PIL import Image

from scaling_lab.data.classification import ImageFolderClassification
from scaling_lab.data.coco import CocoDetection
from scaling_lab.data.scenes import SHAPES, draw_scene
from scaling_lab.data.store import DEFAULT_MEMORY_BUDGET_BYTES, available_cores
from scaling_lab.errors import ScalingLabError

SPLITS = ("train", "val")
# Part of every cache key: bump it whenever a change to the drawing code changes the pixels.
GENERATOR_VERSION = 1


def cache_root() -> Path:
    """``$SCALING_LAB_CACHE``, default ``~/.cache/scaling-lab``."""
    return Path(os.environ.get("SCALING_LAB_CACHE") or "~/.cache/scaling-lab").expanduser()


class _Config:
    """Knob validation shared by the two generator configs (frozen dataclasses)."""

    @classmethod
    def from_knobs(cls, knobs: dict[str, Any]):
        names = [field.name for field in dataclasses.fields(cls)]
        unknown = sorted(set(knobs) - set(names))
        if unknown:
            raise ScalingLabError(
                f"{cls.__name__}: unknown knob(s) {', '.join(map(repr, unknown))}; valid knobs are {', '.join(names)}"
            )
        for field in dataclasses.fields(cls):
            if field.name in knobs and not _has_type(knobs[field.name], field.type):
                expected = "an integer" if field.type == "int" else "a number"
                raise ScalingLabError(f"{cls.__name__}: {field.name}={knobs[field.name]!r} must be {expected}")
        return cls(**knobs)

    def check(self, condition: bool, knob: str, valid: str) -> None:
        if not condition:
            raise ScalingLabError(f"{type(self).__name__}: {knob}={getattr(self, knob)!r} is not valid; {valid}")

    @property
    def cache_key(self) -> str:
        text = json.dumps({"version": GENERATOR_VERSION, **dataclasses.asdict(self)}, sort_keys=True)
        return hashlib.sha256(text.encode()).hexdigest()[:12]


def _has_type(value: Any, annotation: str) -> bool:
    if isinstance(value, bool):
        return False
    if annotation == "int":
        return isinstance(value, int)
    return isinstance(value, (int, float))  # "float"


@dataclass(frozen=True)
class SyntheticCocoConfig(_Config):
    """Knobs of the synthetic detection dataset (sizes in pixels)."""

    seed: int = 0
    train_images: int = 256
    val_images: int = 64
    image_size: int = 320  # longest side; the other is 75-100 % of it
    min_objects: int = 2
    max_objects: int = 12
    min_object_size: float = 8.0  # diameter of the shape's circumscribed circle
    max_object_size: float = 224.0
    noise: float = 0.04  # standard deviation of the pixel noise, as a fraction of 255
    clutter: float = 1.0  # mean number of distractors = 8 x clutter
    max_occlusion: float = 0.5  # the most of an object that others (or the border) may hide

    def __post_init__(self) -> None:
        self.check(self.train_images >= 1, "train_images", "it must be at least 1")
        self.check(self.val_images >= 1, "val_images", "it must be at least 1")
        self.check(self.image_size >= 32, "image_size", "it must be at least 32 pixels")
        self.check(self.min_objects >= 0, "min_objects", "it must be at least 0")
        self.check(self.max_objects >= max(1, self.min_objects), "max_objects", "it must be at least 1 and min_objects")
        self.check(self.min_object_size >= 2, "min_object_size", "it must be at least 2 pixels")
        self.check(
            self.min_object_size <= self.max_object_size <= self.image_size,
            "max_object_size",
            f"it must be between min_object_size ({self.min_object_size}) and image_size ({self.image_size})",
        )
        self.check(0 <= self.noise <= 1, "noise", "it must be in [0, 1]")
        self.check(self.clutter >= 0, "clutter", "it must be at least 0")
        self.check(0 <= self.max_occlusion < 1, "max_occlusion", "it must be in [0, 1)")


@dataclass(frozen=True)
class SyntheticClassificationConfig(_Config):
    """Knobs of the synthetic classification dataset (square images, one dominant shape each)."""

    seed: int = 0
    train_per_class: int = 64
    val_per_class: int = 16
    image_size: int = 128
    min_object_fraction: float = 0.3  # shape diameter as a fraction of the image side
    max_object_fraction: float = 0.9
    noise: float = 0.04
    clutter: float = 1.0

    def __post_init__(self) -> None:
        self.check(self.train_per_class >= 1, "train_per_class", "it must be at least 1")
        self.check(self.val_per_class >= 1, "val_per_class", "it must be at least 1")
        self.check(self.image_size >= 16, "image_size", "it must be at least 16 pixels")
        self.check(0 < self.min_object_fraction <= 1, "min_object_fraction", "it must be in (0, 1]")
        self.check(
            self.min_object_fraction <= self.max_object_fraction <= 1,
            "max_object_fraction",
            f"it must be between min_object_fraction ({self.min_object_fraction}) and 1",
        )
        self.check(0 <= self.noise <= 1, "noise", "it must be in [0, 1]")
        self.check(self.clutter >= 0, "clutter", "it must be at least 0")


# ----------------------------------------------------------------------------------------------
# Public entry points


def make_synthetic_coco(root: str | Path | None = None, **knobs: Any) -> Path:
    """Generate (once) the synthetic detection dataset and return its root folder, holding
    ``<split>/images/*.png`` and ``<split>/annotations.json`` for the train and val splits.

    Knobs are the fields of :class:`SyntheticCocoConfig`; the default root is
    ``cache_root()/synthetic/<hash of the knobs>``.
    """
    config = SyntheticCocoConfig.from_knobs(knobs)
    root = Path(root) if root is not None else cache_root() / "synthetic" / config.cache_key
    return _materialize(root, config, lambda folder: _write_coco(folder, config))


def synthetic_dataset(
    split: str = "train",
    root: str | Path | None = None,
    memory_budget_bytes: int = DEFAULT_MEMORY_BUDGET_BYTES,
    **knobs: Any,
) -> CocoDetection:
    """One split of the synthetic detection dataset, generated on first use."""
    _check_split(split)
    root = make_synthetic_coco(root, **knobs)
    return CocoDetection(root / split / "images", root / split / "annotations.json", memory_budget_bytes)


def make_synthetic_classification(root: str | Path | None = None, **knobs: Any) -> Path:
    """Generate (once) the synthetic classification dataset and return its root folder, holding
    ``<split>/<shape name>/*.png`` for the train and val splits.

    Knobs are the fields of :class:`SyntheticClassificationConfig`; the default root is
    ``cache_root()/synthetic-classification/<hash of the knobs>``.
    """
    config = SyntheticClassificationConfig.from_knobs(knobs)
    root = Path(root) if root is not None else cache_root() / "synthetic-classification" / config.cache_key
    return _materialize(root, config, lambda folder: _write_classification(folder, config))


def synthetic_classification(
    split: str = "train",
    root: str | Path | None = None,
    memory_budget_bytes: int = DEFAULT_MEMORY_BUDGET_BYTES,
    **knobs: Any,
) -> ImageFolderClassification:
    """One split of the synthetic classification dataset, generated on first use."""
    _check_split(split)
    return ImageFolderClassification(make_synthetic_classification(root, **knobs) / split, memory_budget_bytes)


def _check_split(split: str) -> None:
    if split not in SPLITS:
        raise ScalingLabError(f"split {split!r} is not valid; valid splits are {', '.join(SPLITS)}")


# ----------------------------------------------------------------------------------------------
# Cache


def _materialize(root: Path, config: _Config, write: Callable[[Path], None]) -> Path:
    """Return ``root`` holding the dataset of ``config``, writing it atomically if absent."""
    params = {"generator_version": GENERATOR_VERSION, "kind": type(config).__name__, **dataclasses.asdict(config)}
    if root.exists():
        _check_params(root, params)
        return root
    try:
        root.parent.mkdir(parents=True, exist_ok=True)
        partial = Path(tempfile.mkdtemp(prefix=f".{root.name}.partial-", dir=root.parent))
    except OSError as error:
        raise ScalingLabError(
            f"cannot create the dataset folder {root} ({error}); set SCALING_LAB_CACHE to a writable folder"
        ) from None
    try:
        write(partial)
        (partial / "params.json").write_text(json.dumps(params, indent=2, sort_keys=True))
        os.rename(partial, root)
    except OSError as error:
        if not root.exists():  # not a race lost to another process writing the same dataset
            raise ScalingLabError(f"writing the synthetic dataset to {root} failed ({error})") from None
    finally:
        shutil.rmtree(partial, ignore_errors=True)
    return root


def _check_params(root: Path, params: dict[str, Any]) -> None:
    try:
        found = json.loads((root / "params.json").read_text())
    except (OSError, json.JSONDecodeError):
        found = None
    if found != params:
        raise ScalingLabError(
            f"folder {root} exists but does not hold the synthetic dataset asked for ({root / 'params.json'} "
            "is missing or has other parameters); choose another root or delete that folder"
        )


# ----------------------------------------------------------------------------------------------
# Writers


def _write_coco(folder: Path, config: SyntheticCocoConfig) -> None:
    categories = [{"id": index + 1, "name": name, "supercategory": "shape"} for index, name in enumerate(SHAPES)]
    for split_index, (split, count) in enumerate((("train", config.train_images), ("val", config.val_images))):
        (folder / split / "images").mkdir(parents=True)
        draw = functools.partial(_write_coco_image, folder / split / "images", config, split_index)
        images, annotations = [], []
        for image, objects in _parallel_map(draw, range(count)):
            images.append(image)
            for shape, (x1, y1, x2, y2), area in objects:
                annotations.append(
                    {
                        "id": len(annotations) + 1,
                        "image_id": image["id"],
                        "category_id": shape + 1,
                        "bbox": [x1, y1, x2 - x1, y2 - y1],
                        "area": area,
                        "iscrowd": 0,
                    }
                )
        content = {"images": images, "annotations": annotations, "categories": categories}
        (folder / split / "annotations.json").write_text(json.dumps(content))


def _write_coco_image(
    folder: Path, config: SyntheticCocoConfig, split_index: int, index: int
) -> tuple[dict[str, Any], list[tuple[int, tuple[int, int, int, int], int]]]:
    rng = np.random.default_rng([config.seed, split_index, index])
    long_side, short_side = config.image_size, round(config.image_size * rng.uniform(0.75, 1.0))
    width, height = (long_side, short_side) if rng.random() < 0.5 else (short_side, long_side)
    count = int(rng.integers(config.min_objects, config.max_objects + 1))
    sizes = np.exp(rng.uniform(math.log(config.min_object_size), math.log(config.max_object_size), count))
    requested = [(int(rng.integers(len(SHAPES))), float(size)) for size in sizes]
    pixels, objects = draw_scene(
        rng, width, height, requested, config.noise, config.clutter, config.max_occlusion, center_margin=0.0
    )
    file_name = f"{index:06d}.png"
    Image.fromarray(pixels).save(folder / file_name, compress_level=1)
    return {"id": index + 1, "file_name": file_name, "width": width, "height": height}, objects


def _write_classification(folder: Path, config: SyntheticClassificationConfig) -> None:
    for split_index, (split, per_class) in enumerate((("train", config.train_per_class), ("val", config.val_per_class))):
        for name in SHAPES:
            (folder / split / name).mkdir(parents=True)
        draw = functools.partial(_write_classification_image, folder / split, config, split_index)
        _parallel_map(draw, [(shape, index) for shape in range(len(SHAPES)) for index in range(per_class)])


def _write_classification_image(
    folder: Path, config: SyntheticClassificationConfig, split_index: int, item: tuple[int, int]
) -> None:
    shape, index = item
    rng = np.random.default_rng([config.seed, 2 + split_index, shape, index])
    fraction = math.exp(rng.uniform(math.log(config.min_object_fraction), math.log(config.max_object_fraction)))
    size = config.image_size
    pixels, _ = draw_scene(
        rng, size, size, [(shape, size * fraction)], config.noise, config.clutter, max_occlusion=1.0, center_margin=0.3
    )
    Image.fromarray(pixels).save(folder / SHAPES[shape] / f"{index:05d}.png", compress_level=1)


def _parallel_map(function: Callable[[Any], Any], items: Sequence[Any]) -> list[Any]:
    """``[function(item) for item in items]`` on all cores (drawing and PNG encoding hold the GIL)."""
    workers = min(len(items), available_cores())
    if workers <= 1 or "fork" not in multiprocessing.get_all_start_methods():
        return [function(item) for item in items]
    with ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("fork")) as pool:
        return list(pool.map(function, items, chunksize=max(1, len(items) // (4 * workers))))
