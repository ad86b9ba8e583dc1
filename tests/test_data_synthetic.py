"""The synthetic shape datasets (detection and classification) and folder classification."""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from scaling_lab.data import (
    SHAPES,
    ClassificationLoader,
    ImageFolderClassification,
    make_synthetic_classification,
    make_synthetic_coco,
    synthetic_classification,
    synthetic_dataset,
)
from scaling_lab.data import synthetic
from scaling_lab.errors import ScalingLabError

SMALL = {"train_images": 6, "val_images": 3, "image_size": 96, "max_object_size": 64.0}
SMALL_CLASSIFICATION = {"train_per_class": 3, "val_per_class": 2, "image_size": 48}


@pytest.fixture(autouse=True)
def isolated_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("SCALING_LAB_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache"


def files_of(root: Path) -> dict[str, bytes]:
    return {str(path.relative_to(root)): path.read_bytes() for path in sorted(root.rglob("*")) if path.is_file()}


# --- detection --------------------------------------------------------------------------------


def test_generation_is_deterministic_for_a_seed(tmp_path):
    first = make_synthetic_coco(tmp_path / "a", **SMALL)
    second = make_synthetic_coco(tmp_path / "b", **SMALL)
    other_seed = make_synthetic_coco(tmp_path / "c", **SMALL, seed=1)
    assert files_of(first) == files_of(second)  # same JSON, same PNG bytes
    assert files_of(first)["train/annotations.json"] != files_of(other_seed)["train/annotations.json"]


def test_layout_is_coco_with_train_and_val_splits(tmp_path):
    root = make_synthetic_coco(tmp_path / "data", **SMALL)
    for split, count in (("train", 6), ("val", 3)):
        content = json.loads((root / split / "annotations.json").read_text())
        assert len(content["images"]) == count
        assert [category["name"] for category in content["categories"]] == list(SHAPES)
        for image in content["images"]:
            assert Image.open(root / split / "images" / image["file_name"]).size == (image["width"], image["height"])
            assert max(image["width"], image["height"]) == 96
        for annotation in content["annotations"]:
            x, y, w, h = annotation["bbox"]
            image = content["images"][annotation["image_id"] - 1]
            assert w > 0 and h > 0 and x >= 0 and y >= 0 and x + w <= image["width"] and y + h <= image["height"]
            assert 0 < annotation["area"] <= w * h and annotation["iscrowd"] == 0


def test_generated_once_into_the_cache_and_then_reused(isolated_cache, monkeypatch):
    root = make_synthetic_coco(**SMALL)
    assert root.parent == isolated_cache / "synthetic" and len(root.name) == 12
    before = {path: path.stat().st_mtime_ns for path in root.rglob("*")}

    def no_regeneration(*arguments):
        raise AssertionError("regenerated a cached dataset")

    monkeypatch.setattr(synthetic, "_write_coco", no_regeneration)
    assert make_synthetic_coco(**SMALL) == root
    assert {path: path.stat().st_mtime_ns for path in root.rglob("*")} == before


def test_other_knobs_get_another_cache_folder():
    assert synthetic.SyntheticCocoConfig(seed=1).cache_key != synthetic.SyntheticCocoConfig(seed=2).cache_key
    assert synthetic.SyntheticCocoConfig().cache_key == synthetic.SyntheticCocoConfig().cache_key


def test_an_interrupted_generation_leaves_nothing_that_looks_complete(isolated_cache, monkeypatch):
    real_write = synthetic._write_coco

    def interrupted(folder, config):
        real_write(folder, config)
        raise KeyboardInterrupt  # e.g. Ctrl-C just before the end

    monkeypatch.setattr(synthetic, "_write_coco", interrupted)
    with pytest.raises(KeyboardInterrupt):
        make_synthetic_coco(**SMALL)
    assert not (isolated_cache / "synthetic").exists() or not any((isolated_cache / "synthetic").iterdir())
    monkeypatch.setattr(synthetic, "_write_coco", real_write)
    dataset = synthetic_dataset("val", **SMALL)  # generated afresh, complete
    assert len(dataset) == 3


def test_a_root_holding_something_else_is_an_error(tmp_path):
    make_synthetic_coco(tmp_path / "data", **SMALL)
    with pytest.raises(ScalingLabError, match="does not hold the synthetic dataset asked for"):
        make_synthetic_coco(tmp_path / "data", **{**SMALL, "seed": 9})


@pytest.mark.parametrize(
    "knobs, message",
    [
        ({"colour": "red"}, "unknown knob.*'colour'.*valid knobs are seed, train_images"),
        ({"train_images": 0}, "train_images=0 is not valid; it must be at least 1"),
        ({"train_images": 2.5}, "train_images=2.5 must be an integer"),
        ({"image_size": 64, "max_object_size": 100.0}, "max_object_size=100.0 is not valid.*image_size \\(64\\)"),
        ({"noise": -1}, "noise=-1 is not valid"),
    ],
)
def test_bad_knobs_are_errors_naming_the_knob(knobs, message):
    with pytest.raises(ScalingLabError, match=message):
        make_synthetic_coco(**knobs)


def test_bad_split_is_an_error():
    with pytest.raises(ScalingLabError, match="split 'test' is not valid; valid splits are train, val"):
        synthetic_dataset("test", **SMALL)


def test_object_sizes_span_a_wide_range_and_every_shape_appears(tmp_path):
    root = make_synthetic_coco(tmp_path / "data", train_images=40, val_images=1, image_size=128, max_object_size=96.0)
    annotations = json.loads((root / "train" / "annotations.json").read_text())["annotations"]
    areas = np.array([a["bbox"][2] * a["bbox"][3] for a in annotations])
    assert areas.max() / areas.min() > 50
    assert {a["category_id"] for a in annotations} == set(range(1, len(SHAPES) + 1))


def test_synthetic_dataset_loads_as_coco(tmp_path):
    dataset = synthetic_dataset("train", root=tmp_path / "data", **SMALL)
    assert dataset.num_classes == len(SHAPES) and dataset.class_names == list(SHAPES)
    assert dataset.stats.degenerate_dropped == 0 and dataset.stats.boxes > 0


@pytest.mark.slow
def test_default_dataset_generates_in_seconds_with_objects_of_every_coco_size_range():
    start = time.perf_counter()
    train, val = synthetic_dataset("train"), synthetic_dataset("val")
    assert time.perf_counter() - start < 60
    assert (len(train), len(val)) == (256, 64)
    areas = np.array([annotation["area"] for annotation in val.coco.dataset["annotations"]])
    assert (areas < 32**2).any() and ((areas >= 32**2) & (areas < 96**2)).any() and (areas >= 96**2).any()
    boxes_per_image = train.stats.boxes / len(train)
    assert 3 <= boxes_per_image <= 12


# --- classification ---------------------------------------------------------------------------


def write_folders(root: Path, counts: dict[str, int]) -> Path:
    for name, count in counts.items():
        (root / name).mkdir(parents=True)
        for index in range(count):
            Image.new("RGB", (40 + index, 30), (index * 20, 0, 0)).save(root / name / f"{index}.png")
    return root


def test_image_folder_labels_follow_sorted_folder_names(tmp_path):
    root = write_folders(tmp_path / "images", {"zebra": 2, "ant": 3})
    (root / "ant" / "notes.txt").write_text("not an image")
    dataset = ImageFolderClassification(root)
    assert dataset.class_names == ["ant", "zebra"] and dataset.num_classes == 2
    assert len(dataset) == 5 and dataset.labels.tolist() == [0, 0, 0, 1, 1]


def test_classification_loader_batches_and_seeding(tmp_path):
    dataset = ImageFolderClassification(write_folders(tmp_path / "images", {"a": 4, "b": 3}))
    eval_loader = ClassificationLoader(dataset, 32, 4, train=False)
    batches = list(eval_loader)
    assert len(eval_loader) == 2 and [labels.tolist() for _, labels in batches] == [[0, 0, 0, 0], [1, 1, 1]]
    images, labels = batches[0]
    assert images.shape == (4, 3, 32, 32) and images.dtype == torch.float32 and labels.dtype == torch.int64
    assert images[:, :, 24:, :].eq(0).all()  # 40x30 -> 32x24, padded at the bottom
    first = [labels.tolist() for _, labels in ClassificationLoader(dataset, 32, 3, train=True, seed=4)]
    again = [labels.tolist() for _, labels in ClassificationLoader(dataset, 32, 3, train=True, seed=4)]
    assert first == again and len(first) == 2


def test_bad_classification_folders_are_errors(tmp_path):
    with pytest.raises(ScalingLabError, match="nowhere does not exist"):
        ImageFolderClassification(tmp_path / "nowhere")
    (tmp_path / "flat").mkdir()
    Image.new("RGB", (8, 8)).save(tmp_path / "flat" / "image.png")
    with pytest.raises(ScalingLabError, match="has no class sub-folders"):
        ImageFolderClassification(tmp_path / "flat")
    root = write_folders(tmp_path / "images", {"a": 1})
    (root / "empty").mkdir()
    with pytest.raises(ScalingLabError, match="class folder .*empty holds no images"):
        ImageFolderClassification(root)


def test_unreadable_classification_image_is_an_error_naming_it(tmp_path):
    root = write_folders(tmp_path / "images", {"a": 2})
    (root / "a" / "1.png").write_bytes(b"garbage")
    with pytest.raises(ScalingLabError, match=r"1\.png cannot be read as an image"):
        next(iter(ClassificationLoader(ImageFolderClassification(root), 32, 2, train=False)))


def test_synthetic_classification_has_one_folder_per_shape_and_is_cached(isolated_cache):
    train = synthetic_classification("train", **SMALL_CLASSIFICATION)
    val = synthetic_classification("val", **SMALL_CLASSIFICATION)
    assert train.class_names == sorted(SHAPES) and len(train) == 3 * len(SHAPES) and len(val) == 2 * len(SHAPES)
    root = make_synthetic_classification(**SMALL_CLASSIFICATION)
    assert root.parent == isolated_cache / "synthetic-classification" and train.root == root / "train"
    images, labels = next(iter(ClassificationLoader(train, 48, 6, train=True, seed=0)))
    assert images.shape == (6, 3, 48, 48) and labels.max() < len(SHAPES)


def test_synthetic_classification_is_deterministic(tmp_path):
    first = make_synthetic_classification(tmp_path / "a", **SMALL_CLASSIFICATION)
    second = make_synthetic_classification(tmp_path / "b", **SMALL_CLASSIFICATION)
    assert files_of(first) == files_of(second)
