"""Which images a trial trains and validates on: the task's datasets, a budget's subset of them,
and their seeded loaders (a data-parallel worker's loader yields its share of each global batch).

A budget's ``max_train_images`` / ``max_val_images`` take evenly spaced images of the split
(the same ones for every seed and trial, and every class of a class-sorted folder).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch

from scaling_lab.data.classification import ClassificationLoader, ImageFolderClassification
from scaling_lab.data.coco import CocoDetection
from scaling_lab.data.loader import DetectionLoader
from scaling_lab.data.store import ImageStore
from scaling_lab.data.synthetic import synthetic_classification, synthetic_dataset
from scaling_lab.errors import ScalingLabError
from scaling_lab.trial import Task


class ImageSubset:
    """Some images of a dataset (``CocoDetection`` or ``ImageFolderClassification``), usable
    wherever the dataset is: the loaders need its ``image_store``, ``targets``/``labels`` and
    ``image_ids``; everything else (``coco``, ``coco_results``, class names) is the dataset's."""

    def __init__(self, dataset, indices: list[int]):
        self._dataset = dataset
        self._indices = indices
        store = dataset.image_store
        sizes = store.expected_sizes
        self.image_store = ImageStore(
            [store.paths[i] for i in indices], [sizes[i] for i in indices] if sizes is not None else None, store.memory_budget_bytes
        )
        if hasattr(dataset, "image_ids"):
            self.image_ids = [dataset.image_ids[i] for i in indices]
        if hasattr(dataset, "labels"):
            self.labels = dataset.labels[indices]

    def __len__(self) -> int:
        return len(self._indices)

    def targets(self, index: int):
        return self._dataset.targets(self._indices[index])

    def __getattr__(self, name: str) -> Any:
        return getattr(self._dataset, name)


def limit_images(dataset, count: int | None):
    """The dataset itself, or ``count`` evenly spaced images of it when it has more."""
    if count is None or count >= len(dataset):
        return dataset
    return ImageSubset(dataset, np.linspace(0, len(dataset) - 1, count).round().astype(int).tolist())


def skipped_data_notes(train_set: Any, val_set: Any) -> list[str]:
    """The trial's data summary of what ``task.bad_data: skip`` left out, one note per split."""
    notes = []
    for split, dataset in (("train", train_set), ("val", val_set)):
        images, annotations = getattr(dataset, "images_skipped", 0), getattr(dataset, "annotations_skipped", 0)
        stats = getattr(dataset, "stats", None)
        if stats is not None:
            images, annotations = stats.images_skipped, stats.annotations_skipped + stats.degenerate_dropped
        if images or annotations:
            notes.append(f"{split} data: skipped {images} unusable image(s) and {annotations} unusable annotation(s) (task bad_data: skip)")
    return notes


def _existing(path: Path, what: str, hint: str) -> Path:
    if not path.exists():
        raise ScalingLabError(f"{what} {path} does not exist; {hint}")
    return path


def load_split(task: Task, split: str):
    """The ``split`` (train or val) dataset a task names (see ``Task`` for the folder layouts)."""
    knobs = dict(task.synthetic)
    if task.data == "synthetic":
        make = synthetic_dataset if task.kind == "detection" else synthetic_classification
        return make(split, **knobs)
    if knobs:
        raise ScalingLabError(f"task synthetic knobs {knobs} are only valid with data 'synthetic', not {task.data!r}")
    root = Path(task.data)
    layout = "expected train/ and val/ folders, or 'synthetic'"
    _existing(root, "task data folder", layout)
    if task.kind == "classification":
        return ImageFolderClassification(_existing(root / split, "classification split", layout), bad_data=task.bad_data)
    images = getattr(task, f"{split}_images") or root / split / "images"
    annotations = getattr(task, f"{split}_annotations") or root / split / "annotations.json"
    hint = f"set task {split}_images/{split}_annotations or use the layout <data>/{split}/images + <data>/{split}/annotations.json"
    dataset = CocoDetection(_existing(Path(images), "images folder", hint), _existing(Path(annotations), "annotation file", hint), labels=task.labels, bad_data=task.bad_data)
    if split == "val" and dataset.stats.boxes == 0:
        raise ScalingLabError(
            f"validation annotation file {annotations} holds no boxes to score against ({dataset.stats.images} images, "
            f"{dataset.stats.annotations} annotations, none a usable box), so every AP would be NaN; give a validation split with annotations"
        )
    return dataset


def load_datasets(task: Task) -> tuple[Any, Any]:
    """The (train, val) datasets a task names, checked to hold the same classes."""
    train, val = load_split(task, "train"), load_split(task, "val")
    if task.data == "synthetic":
        return train, val
    if task.kind == "classification":
        if train.class_names != val.class_names:
            raise ScalingLabError(
                f"the train and val folders of {task.data} hold different classes ({train.class_names} vs {val.class_names}); "
                "both splits need the same class sub-folders"
            )
        return train, val
    if train.label_to_category_id != val.label_to_category_id:
        raise ScalingLabError(
            f"the train and val annotation files of {task.data!r} list different categories "
            f"(ids {train.label_to_category_id} vs {val.label_to_category_id}); both splits need the same categories"
        )
    return train, val


def make_loader(task: Task, dataset: Any, resolution: int, train: bool, seed: int, device: torch.device, shard: tuple[int, int] = (0, 1)):
    """The task kind's loader of ``dataset`` at the task's (global) batch size, training batches
    augmented unless ``task.augment`` is off; ``shard`` (rank, workers) yields one worker's share
    of each batch (see ``BatchLoader``)."""
    loader = DetectionLoader if task.kind == "detection" else ClassificationLoader
    augmentation = {} if task.augment else {"scale_range": (1.0, 1.0), "flip_probability": 0.0}
    return loader(dataset, resolution, task.batch_size, train=train, seed=seed, device=device, shard=shard, **augmentation)
