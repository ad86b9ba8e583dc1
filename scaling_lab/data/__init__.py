"""Datasets and loaders: COCO-format detection, folder classification and synthetic shapes.

Typical use::

    train = synthetic_dataset("train")          # or CocoDetection(images_dir, annotation_file)
    loader = DetectionLoader(train, resolution=256, batch_size=16, train=True, seed=0, device="cuda")
    for batch in loader:                         # DetectionBatch, already on the device
        ...
"""

from scaling_lab.data.classification import ClassificationLoader, ImageFolderClassification
from scaling_lab.data.coco import CocoDetection, CocoStats
from scaling_lab.data.loader import DetectionBatch, DetectionLoader
from scaling_lab.data.store import DEFAULT_MEMORY_BUDGET_BYTES
from scaling_lab.data.synthetic import (
    SHAPES,
    SyntheticClassificationConfig,
    SyntheticCocoConfig,
    cache_root,
    make_synthetic_classification,
    make_synthetic_coco,
    synthetic_classification,
    synthetic_dataset,
)
from scaling_lab.data.transforms import IMAGENET_MEAN, IMAGENET_STD

__all__ = [
    "DEFAULT_MEMORY_BUDGET_BYTES",
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "SHAPES",
    "ClassificationLoader",
    "CocoDetection",
    "CocoStats",
    "DetectionBatch",
    "DetectionLoader",
    "ImageFolderClassification",
    "SyntheticClassificationConfig",
    "SyntheticCocoConfig",
    "cache_root",
    "make_synthetic_classification",
    "make_synthetic_coco",
    "synthetic_classification",
    "synthetic_dataset",
]
