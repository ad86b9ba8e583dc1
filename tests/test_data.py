"""COCO-format detection data: reading, validation, batching contract and transforms."""

from __future__ import annotations

import io
import json
import math
from contextlib import redirect_stdout
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from pycocotools.cocoeval import COCOeval

from scaling_lab.data import IMAGENET_MEAN, IMAGENET_STD, CocoDetection, DetectionBatch, DetectionLoader
from scaling_lab.data.transforms import Augmentation, warp_boxes
from scaling_lab.errors import ScalingLabError


def write_coco(
    root: Path,
    images: list[dict],
    annotations: list[dict],
    categories: list[dict] | None = None,
    pixels: dict[str, np.ndarray] | None = None,
) -> tuple[Path, Path]:
    """A COCO dataset in ``root``: black PNGs of the listed sizes unless ``pixels`` gives them."""
    images_dir = root / "images"
    images_dir.mkdir(parents=True, exist_ok=True)
    for image in images:
        array = (pixels or {}).get(image["file_name"])
        if array is None:
            array = np.zeros((image["height"], image["width"], 3), np.uint8)
        Image.fromarray(array).save(images_dir / image["file_name"])
    categories = categories if categories is not None else [{"id": 1, "name": "thing"}]
    annotation_file = root / "annotations.json"
    annotation_file.write_text(json.dumps({"images": images, "annotations": annotations, "categories": categories}))
    return images_dir, annotation_file


def image(image_id: int, width: int = 200, height: int = 100) -> dict:
    return {"id": image_id, "file_name": f"{image_id}.png", "width": width, "height": height}


def box(annotation_id: int, image_id: int, bbox: list[float], category_id: int = 1, **extra) -> dict:
    return {"id": annotation_id, "image_id": image_id, "category_id": category_id, "bbox": bbox, **extra}


def painted_dataset(root: Path, count: int = 8) -> CocoDetection:
    """Black images, each with one white rectangle annotated exactly."""
    rng = np.random.default_rng(0)
    images, annotations, pixels = [], [], {}
    for image_id in range(1, count + 1):
        width, height = int(rng.integers(80, 160)), int(rng.integers(80, 160))
        x, y = int(rng.integers(0, width - 30)), int(rng.integers(0, height - 30))
        w, h = int(rng.integers(12, width - x)), int(rng.integers(12, height - y))
        array = np.zeros((height, width, 3), np.uint8)
        array[y : y + h, x : x + w] = 255
        images.append(image(image_id, width, height))
        annotations.append(box(image_id, image_id, [x, y, w, h]))
        pixels[f"{image_id}.png"] = array
    return CocoDetection(*write_coco(root, images, annotations, pixels=pixels))


# --- reading and validation -------------------------------------------------------------------


def test_category_ids_become_contiguous_labels_in_id_order(tmp_path):
    categories = [{"id": 12, "name": "c"}, {"id": 3, "name": "a"}, {"id": 7, "name": "b"}]
    annotations = [box(1, 1, [0, 0, 10, 10], 12), box(2, 1, [5, 5, 10, 10], 3), box(3, 2, [1, 1, 4, 4], 7)]
    dataset = CocoDetection(*write_coco(tmp_path, [image(2), image(1)], annotations, categories))
    assert dataset.num_classes == 3
    assert dataset.label_to_category_id == [3, 7, 12]
    assert dataset.category_id_to_label == {3: 0, 7: 1, 12: 2}
    assert dataset.class_names == ["a", "b", "c"]
    assert dataset.image_ids == [1, 2]  # sorted by id
    boxes, labels = dataset.targets(0)
    assert labels.tolist() == [2, 0]
    np.testing.assert_allclose(boxes, [[0, 0, 10, 10], [5, 5, 15, 15]])
    assert sorted(dataset.coco.getImgIds()) == [1, 2]  # the pycocotools object, for loadRes/COCOeval


def test_crowd_ignored_partly_outside_clipped_and_bad_boxes_dropped_when_skipping(tmp_path):
    annotations = [
        box(1, 1, [10, 10, 20, 20]),  # kept
        box(2, 1, [30, 30, 50, 50], iscrowd=1),  # crowd: ignored
        box(3, 1, [40, 40, 0, 10]),  # zero width: dropped
        box(4, 1, [40, 40, 10, -5]),  # negative height: dropped
        box(5, 1, [250, 10, 20, 20]),  # entirely right of the 200 px wide image: dropped
        box(6, 1, [-10, 90, 30, 30]),  # partly outside: clipped to [0, 90, 20, 100]
    ]
    files = write_coco(tmp_path, [image(1)], annotations)
    with pytest.raises(ScalingLabError, match=r"annotation 3 \(image 1\): bbox \[40, 40, 0, 10\] has a width or height that is not positive"):
        CocoDetection(*files)  # by default a bad box is an error naming it
    dataset = CocoDetection(*files, bad_data="skip")
    boxes, labels = dataset.targets(0)
    np.testing.assert_allclose(boxes, [[10, 10, 30, 30], [0, 90, 20, 100]])
    assert labels.tolist() == [0, 0]
    stats = dataset.stats
    assert (stats.images, stats.annotations, stats.boxes) == (1, 6, 2)
    assert (stats.crowd_ignored, stats.degenerate_dropped, stats.clipped) == (1, 3, 1)


def test_images_without_boxes_are_kept_as_negatives(tmp_path):
    dataset = CocoDetection(*write_coco(tmp_path, [image(1), image(2)], [box(1, 1, [0, 0, 5, 5])]))
    assert len(dataset) == 2
    assert dataset.targets(1)[0].shape == (0, 4)


def test_unknown_category_id_is_an_error_naming_the_file_and_the_id(tmp_path):
    images_dir, annotation_file = write_coco(tmp_path, [image(1)], [box(1, 1, [0, 0, 5, 5], category_id=99)])
    with pytest.raises(ScalingLabError, match=r"annotations\.json.*annotation 1.*category_id 99.*valid category ids are 1"):
        CocoDetection(images_dir, annotation_file)


def test_missing_image_file_is_an_error_naming_the_image(tmp_path):
    images_dir, annotation_file = write_coco(tmp_path, [image(1), image(2)], [])
    (images_dir / "2.png").unlink()
    with pytest.raises(ScalingLabError, match=r"2\.png \(image id 2\)"):
        CocoDetection(images_dir, annotation_file)


def test_missing_or_bad_annotation_file_is_an_error_naming_the_file(tmp_path):
    with pytest.raises(ScalingLabError, match="nowhere.json does not exist"):
        CocoDetection(tmp_path, tmp_path / "nowhere.json")
    broken = tmp_path / "broken.json"
    broken.write_text('{"images": [')
    with pytest.raises(ScalingLabError, match="broken.json is not valid JSON"):
        CocoDetection(tmp_path, broken)
    no_categories = tmp_path / "no_categories.json"
    no_categories.write_text('{"images": [], "annotations": []}')
    with pytest.raises(ScalingLabError, match="no_categories.json.*'categories' is missing"):
        CocoDetection(tmp_path, no_categories)


@pytest.mark.parametrize(
    "annotation, message",
    [
        (box(1, 5, [0, 0, 5, 5]), "image_id 5 is not one of the file's images"),
        (box(1, 1, [0, 0, 5]), r"bbox \[0, 0, 5\] must be \[x, y, width, height\]"),
        ({"image_id": 1, "category_id": 1, "bbox": [0, 0, 5, 5]}, r"annotations\[0\] has no integer 'id'"),
    ],
)
def test_malformed_annotations_are_errors(tmp_path, annotation, message):
    with pytest.raises(ScalingLabError, match=message):
        CocoDetection(*write_coco(tmp_path, [image(1)], [annotation]))


def test_empty_dataset_is_an_error(tmp_path):
    with pytest.raises(ScalingLabError, match="lists no images"):
        CocoDetection(*write_coco(tmp_path, [], []))


def test_image_size_differing_from_the_annotation_is_an_error_naming_the_image(tmp_path):
    images_dir, annotation_file = write_coco(tmp_path, [image(1, 200, 100)], [])
    Image.new("RGB", (50, 50)).save(images_dir / "1.png")
    with pytest.raises(ScalingLabError, match=r"1\.png \(image id 1\) is 50x50 .* says 200x100"):
        CocoDetection(images_dir, annotation_file)  # found up front, before training
    Image.new("RGB", (200, 100)).save(images_dir / "1.png")
    loader = DetectionLoader(CocoDetection(images_dir, annotation_file), 64, 1, train=False)
    Image.new("RGB", (50, 50)).save(images_dir / "1.png")  # replaced while the dataset is open
    with pytest.raises(ScalingLabError, match=r"1\.png is 50x50 .* says 200x100"):
        next(iter(loader))


def test_unreadable_image_is_an_error_naming_it(tmp_path):
    images_dir, annotation_file = write_coco(tmp_path, [image(1)], [])
    dataset = CocoDetection(images_dir, annotation_file)
    (images_dir / "1.png").write_bytes(b"not a png")
    with pytest.raises(ScalingLabError, match=r"1\.png \(image id 1\) cannot be read as an image"):
        CocoDetection(images_dir, annotation_file)
    with pytest.raises(ScalingLabError, match=r"1\.png cannot be read as an image"):
        next(iter(DetectionLoader(dataset, 64, 1, train=False)))


# --- batching contract ------------------------------------------------------------------------


def test_eval_batch_contract_and_round_trip_to_original_coordinates(tmp_path):
    annotations = [box(1, 1, [10, 20, 50, 30]), box(2, 1, [100, 0, 100, 100]), box(3, 2, [3, 4, 5, 6])]
    dataset = CocoDetection(*write_coco(tmp_path, [image(1, 200, 100), image(2, 60, 120), image(3)], annotations))
    batch = next(iter(DetectionLoader(dataset, resolution=64, batch_size=3, train=False, seed=0)))
    assert isinstance(batch, DetectionBatch)
    assert batch.images.shape == (3, 3, 64, 64) and batch.images.dtype == torch.float32
    assert batch.boxes.shape == (3, 2, 4) and batch.boxes.dtype == torch.float32
    assert batch.labels.shape == (3, 2) and batch.labels.dtype == torch.int64
    assert batch.image_ids == [1, 2, 3]
    torch.testing.assert_close(batch.scales, torch.tensor([64 / 200, 64 / 120, 64 / 200]))
    assert batch.labels.tolist() == [[0, 0], [0, -1], [-1, -1]]
    assert batch.boxes[1, 1].eq(0).all() and batch.boxes[2].eq(0).all()  # padding rows are zeros
    for row, image_id in enumerate(batch.image_ids):
        original, _ = dataset.targets(dataset.image_ids.index(image_id))
        count = len(original)
        torch.testing.assert_close(batch.boxes[row, :count], torch.from_numpy(original) * batch.scales[row])
        back = batch.boxes[row, :count] / batch.scales[row]  # the documented way back
        assert torch.allclose(back, torch.from_numpy(original), atol=1)


def test_a_wide_image_is_letterboxed_into_a_wide_input_and_its_boxes_come_back(tmp_path):
    # 320x180 (16:9) into 96x160 (height x width): scale min(96/180, 160/320) = 0.5, the image
    # fills 90 of the 96 rows (a 160x160 square would spend 70 rows on padding)
    dataset = CocoDetection(*write_coco(tmp_path, [image(1, 320, 180)], [box(1, 1, [32, 18, 64, 54])]))
    batch = next(iter(DetectionLoader(dataset, (96, 160), 1, train=False)))
    assert batch.images.shape == (1, 3, 96, 160) and batch.sizes.tolist() == [[90.0, 160.0]]
    assert batch.scales.tolist() == [0.5] and batch.boxes[0, 0].tolist() == [16, 9, 48, 36]
    assert batch.images[0, :, 90:].eq(0).all() and not batch.images[0, :, 89].eq(0).all()
    [record] = dataset.coco_results(1, batch.boxes[0], torch.ones(1), batch.labels[0], batch.scales[0])
    assert record["bbox"] == pytest.approx([32, 18, 64, 54])  # xywh of the original image


def test_eval_images_are_normalized_with_zero_padding(tmp_path):
    color = np.array([200, 100, 50], np.uint8)
    pixels = {"1.png": np.broadcast_to(color, (100, 200, 3)).copy()}
    dataset = CocoDetection(*write_coco(tmp_path, [image(1, 200, 100)], [], pixels=pixels))
    batch = next(iter(DetectionLoader(dataset, 64, 1, train=False)))
    expected = (torch.tensor(color / 255) - torch.tensor(IMAGENET_MEAN)) / torch.tensor(IMAGENET_STD)
    torch.testing.assert_close(batch.images[0, :, :32, :].mean((1, 2)), expected.float(), atol=1e-3, rtol=0)
    assert batch.images[0, :, 32:, :].eq(0).all()  # 200x100 -> 64x32, padded at the bottom
    assert batch.labels.shape == (1, 1) and batch.labels.item() == -1  # M is at least 1


def test_batch_moves_to_a_device():
    batch = DetectionBatch(torch.zeros(1, 3, 8, 8), torch.zeros(1, 1, 4), torch.full((1, 1), -1), [7], torch.ones(1), torch.full((1, 2), 8.0))
    moved = batch.to("cpu", non_blocking=True)
    assert isinstance(moved, DetectionBatch) and moved.image_ids == [7] and moved.images.device.type == "cpu"


@pytest.mark.parametrize("train, resolution", [(False, 96), (True, 96), (True, (64, 128))])
def test_flip_and_jitter_keep_boxes_on_the_painted_pixels(tmp_path, train, resolution):
    dataset = painted_dataset(tmp_path)
    white = ((1 - torch.tensor(IMAGENET_MEAN)) / torch.tensor(IMAGENET_STD)).min()
    for epoch in range(3):
        loader = DetectionLoader(dataset, resolution, 4, train=train, seed=epoch)
        for batch in loader:
            for picture, boxes, labels, (height, width) in zip(batch.images, batch.boxes, batch.labels, batch.sizes.tolist()):
                painted = picture.min(0).values > white / 2
                content = picture.abs().sum(0) > 0  # black image pixels are not 0 after normalization
                assert not content[math.ceil(height) :].any() and not content[:, math.ceil(width) :].any()  # sizes: the image's area
                if (labels < 0).all():  # cropped away by the jitter: nothing painted may be left
                    assert painted.sum() <= 4
                    continue
                x1, y1, x2, y2 = boxes[0].tolist()
                ys, xs = torch.nonzero(painted, as_tuple=True)
                assert xs.min() >= x1 - 1.5 and xs.max() + 1 <= x2 + 1.5
                assert ys.min() >= y1 - 1.5 and ys.max() + 1 <= y2 + 1.5
                inner = painted[int(y1) + 2 : int(y2) - 1, int(x1) + 2 : int(x2) - 1]
                assert inner.float().mean() > 0.95


def test_train_mode_flips_and_jitters(tmp_path):
    dataset = painted_dataset(tmp_path, count=16)
    eval_batch = next(iter(DetectionLoader(dataset, 96, 16, train=False)))
    train_batch = next(iter(DetectionLoader(dataset, 96, 16, train=True, seed=0)))
    order = [eval_batch.image_ids.index(image_id) for image_id in train_batch.image_ids]
    jitter = train_batch.scales / eval_batch.scales[order]
    assert 0.8 <= jitter.min() and jitter.max() <= 1.2 and jitter.std() > 0.05


def test_boxes_cropped_to_almost_nothing_are_removed():
    boxes = torch.tensor([[[0.0, 0.0, 10.0, 10.0], [50.0, 50.0, 60.0, 60.0], [0.0, 0.0, 0.0, 0.0]]])
    labels = torch.tensor([[0, 1, -1]])
    crop = Augmentation(
        flip=torch.tensor([False]), scale=torch.tensor([1.2]), offset_x=torch.tensor([11.5]), offset_y=torch.tensor([0.0])
    )
    warped, kept = warp_boxes(boxes, labels, torch.tensor([[64, 64]]), 64, crop)
    assert kept.tolist() == [[1]]  # the first box (x 0..12 after scaling) is cut to 0.5 px: gone
    torch.testing.assert_close(warped, torch.tensor([[[48.5, 60.0, 60.5, 64.0]]]))  # clipped at the bottom


# --- order, seeding and length ----------------------------------------------------------------


def test_train_order_is_deterministic_for_a_seed_and_changes_every_epoch(tmp_path):
    dataset = painted_dataset(tmp_path, count=12)

    def epochs(seed: int) -> list[list[int]]:
        loader = DetectionLoader(dataset, 64, 4, train=True, seed=seed)
        return [[i for batch in loader for i in batch.image_ids] for _ in range(3)]

    first, again, other = epochs(0), epochs(0), epochs(1)
    assert first == again
    assert first != other
    assert first[0] != first[1] and sorted(first[0]) == list(range(1, 13))

    one, two = DetectionLoader(dataset, 64, 4, train=True, seed=3), DetectionLoader(dataset, 64, 4, train=True, seed=3)
    for left, right in zip(one, two):
        torch.testing.assert_close(left.images, right.images)
        torch.testing.assert_close(left.boxes, right.boxes)
    two.set_epoch(0)
    assert next(iter(two)).image_ids == next(iter(DetectionLoader(dataset, 64, 4, train=True, seed=3))).image_ids


def test_eval_order_is_the_dataset_order_every_epoch(tmp_path):
    loader = DetectionLoader(painted_dataset(tmp_path, count=5), 64, 2, train=False, seed=0)
    assert len(loader) == 3
    for _ in range(2):
        assert [i for batch in loader for i in batch.image_ids] == [1, 2, 3, 4, 5]


def test_train_drops_the_last_partial_batch_unless_it_is_the_only_one(tmp_path):
    dataset = painted_dataset(tmp_path, count=5)
    train = DetectionLoader(dataset, 64, 2, train=True)
    assert len(train) == 2 and [len(b.image_ids) for b in train] == [2, 2]
    small = DetectionLoader(dataset, 64, 8, train=True)
    assert len(small) == 1 and [len(b.image_ids) for b in small] == [5]


def test_decoding_on_the_fly_gives_the_same_batches_as_in_memory(tmp_path):
    in_memory = painted_dataset(tmp_path)
    streamed = CocoDetection(in_memory.images_dir, in_memory.annotation_file, memory_budget_bytes=0)
    assert in_memory.image_store.fits_in_memory(64) and not streamed.image_store.fits_in_memory(64)
    for left, right in zip(DetectionLoader(in_memory, 64, 3, True, seed=5), DetectionLoader(streamed, 64, 3, True, seed=5)):
        assert left.image_ids == right.image_ids
        torch.testing.assert_close(left.images, right.images)
        torch.testing.assert_close(left.boxes, right.boxes)


@pytest.mark.parametrize(
    "arguments, message",
    [
        ({"resolution": 0}, "resolution 0 must be a positive integer"),
        ({"resolution": (64, 0)}, r"resolution \(64, 0\) must be a positive integer \(e.g. 256\) or \(height, width\)"),
        ({"batch_size": 0}, "batch_size 0 must be a positive integer"),
        ({"scale_range": (1.2, 0.8)}, r"scale_range \(1.2, 0.8\)"),
        ({"device": "toaster"}, "device 'toaster' is not a torch device"),
    ],
)
def test_bad_loader_arguments_are_errors(tmp_path, arguments, message):
    dataset = painted_dataset(tmp_path, count=1)
    with pytest.raises(ScalingLabError, match=message):
        DetectionLoader(dataset, **{"resolution": 64, "batch_size": 2, "train": True, **arguments})


# --- writing predictions back -----------------------------------------------------------------


def test_predictions_in_input_pixels_go_back_to_coco_for_cocoeval(tmp_path):
    categories = [{"id": 5, "name": "a"}, {"id": 9, "name": "b"}]
    annotations = [box(1, 1, [10, 20, 50, 30], 9, area=1500), box(2, 2, [3, 4, 40, 60], 5, area=2400)]
    dataset = CocoDetection(*write_coco(tmp_path, [image(1), image(2, 60, 120)], annotations, categories))
    results = []
    for batch in DetectionLoader(dataset, 64, 2, train=False):
        for boxes, labels, image_id, scale in zip(batch.boxes, batch.labels, batch.image_ids, batch.scales):
            valid = labels >= 0
            results += dataset.coco_results(image_id, boxes[valid], torch.ones(int(valid.sum())), labels[valid], scale)
    assert {(r["image_id"], r["category_id"]) for r in results} == {(1, 9), (2, 5)}
    with redirect_stdout(io.StringIO()):
        evaluation = COCOeval(dataset.coco, dataset.coco.loadRes(results), "bbox")
        evaluation.evaluate()
        evaluation.accumulate()
        evaluation.summarize()
    assert evaluation.stats[0] == pytest.approx(1.0)
    with pytest.raises(ScalingLabError, match="label 2 is not a class.*valid labels are 0..1"):
        dataset.coco_results(1, torch.zeros(1, 4), torch.ones(1), torch.tensor([2]), 1.0)
