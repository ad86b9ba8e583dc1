"""A COCO-format detection dataset: an images folder plus an annotation JSON (COCO 2017 itself
or any dataset converted to its format), read with pycocotools.

Category ids become contiguous labels 0..K-1 in increasing id order (``labels="contiguous"``),
or label = category id - 1 up to the largest id (``labels="category_ids"``: COCO's 90 ids, gaps
included, the class layout of the official EfficientDet and effdet weights); ``label_to_category_id``
and ``category_id_to_label`` map both ways so predictions can be written back for COCOeval.
Crowd boxes are ignored, boxes partly outside the image are clipped, and empty or entirely
outside boxes are dropped; ``stats`` counts each case. Images without any box are kept (they
are negatives), in increasing image-id order.
"""

from __future__ import annotations

import contextlib
import io
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
from pycocotools.coco import COCO

from scaling_lab.data.store import DEFAULT_MEMORY_BUDGET_BYTES, ImageStore
from scaling_lab.data.transforms import image_problem
from scaling_lab.documents import DocumentError, parse_json
from scaling_lab.errors import ScalingLabError

_MISSING_IMAGES_NAMED = 5


@dataclass(frozen=True)
class CocoStats:
    """What loading the annotation file kept, ignored, dropped and clipped."""

    images: int
    annotations: int  # in the file, of every kind
    boxes: int  # kept as training/evaluation targets
    crowd_ignored: int
    degenerate_dropped: int  # zero/negative width or height, or entirely outside the image
    clipped: int  # partly outside the image, clipped to it (and kept)
    images_skipped: int = 0  # with bad_data="skip": unusable image files and duplicated image ids
    annotations_skipped: int = 0  # with bad_data="skip": unknown category ids, boxes of skipped images


BAD_DATA = ("error", "skip")


class CocoDetection:
    """Images and their boxes; decoded images come from ``image_store`` (see :class:`DetectionLoader`).

    ``coco`` is the pycocotools object of the annotation file, for ``coco.loadRes`` and ``COCOeval``.
    """

    def __init__(
        self,
        images_dir: str | Path,
        annotation_file: str | Path,
        memory_budget_bytes: int = DEFAULT_MEMORY_BUDGET_BYTES,
        bad_data: str = "error",
        labels: str = "contiguous",
    ) -> None:
        if bad_data not in BAD_DATA:
            raise ScalingLabError(f"bad_data {bad_data!r} is not valid; valid values are {', '.join(BAD_DATA)}")
        self.images_dir = Path(images_dir)
        self.annotation_file = Path(annotation_file)
        skip = bad_data == "skip"
        data = _read_annotation_file(self.annotation_file)
        skipped = _check_structure(data, self.annotation_file, skip)
        if not self.images_dir.is_dir():
            raise ScalingLabError(f"images folder {self.images_dir} (for {self.annotation_file}) does not exist or is not a folder")
        skipped = _check_image_files(data, self.images_dir, self.annotation_file, skip, skipped)
        with contextlib.redirect_stdout(io.StringIO()):  # pycocotools prints progress
            self.coco = COCO()
            self.coco.dataset = data
            self.coco.createIndex()

        self.label_to_category_id: list[int] = _label_space(sorted(self.coco.cats), labels, self.annotation_file)
        self.category_id_to_label: dict[int, int] = {cat: label for label, cat in enumerate(self.label_to_category_id)}
        self.class_names: list[str] = [str(self.coco.cats.get(cat, {}).get("name", cat)) for cat in self.label_to_category_id]
        self.image_ids: list[int] = sorted(self.coco.imgs)
        if not self.image_ids:
            raise ScalingLabError(f"annotation file {self.annotation_file} lists no images; a dataset needs at least one")
        images = [self.coco.imgs[image_id] for image_id in self.image_ids]
        paths = [self.images_dir / image["file_name"] for image in images]
        self.image_store = ImageStore(paths, [(image["height"], image["width"]) for image in images], memory_budget_bytes)

        self._boxes: list[np.ndarray] = []
        self._labels: list[np.ndarray] = []
        crowd = degenerate = clipped = 0
        for image in images:
            boxes, labels = [], []
            for annotation in self.coco.imgToAnns.get(image["id"], []):
                if annotation.get("iscrowd", 0):
                    crowd += 1
                    continue
                x, y, width, height = annotation["bbox"]
                box = [x, y, x + width, y + height]
                inside = [min(max(value, 0.0), limit) for value, limit in zip(box, [image["width"], image["height"]] * 2)]
                problem = _box_problem(width, height, inside)
                if problem:
                    if not skip:
                        raise ScalingLabError(
                            f"annotation file {self.annotation_file}: annotation {annotation['id']} (image {image['id']}): bbox "
                            f"{annotation['bbox']} {problem}; fix it, or set task bad_data: skip to drop such boxes"
                        )
                    degenerate += 1
                    continue
                clipped += inside != box
                boxes.append(inside)
                labels.append(self.category_id_to_label[annotation["category_id"]])
            self._boxes.append(np.asarray(boxes, dtype=np.float32).reshape(-1, 4))
            self._labels.append(np.asarray(labels, dtype=np.int64))
        self.stats = CocoStats(
            images=len(images),
            annotations=len(data["annotations"]),
            boxes=sum(len(labels) for labels in self._labels),
            crowd_ignored=crowd,
            degenerate_dropped=degenerate,
            clipped=clipped,
            images_skipped=skipped["images"],
            annotations_skipped=skipped["annotations"],
        )

    def __len__(self) -> int:
        return len(self.image_ids)

    def __repr__(self) -> str:
        return f"CocoDetection({str(self.annotation_file)!r}, images={len(self)}, classes={self.num_classes})"

    @property
    def num_classes(self) -> int:
        return len(self.label_to_category_id)

    def targets(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        """Boxes (float32 [N, 4], xyxy in original image pixels) and labels (int64 [N]) of an image."""
        return self._boxes[index], self._labels[index]

    def coco_results(
        self,
        image_id: int,
        boxes: torch.Tensor | np.ndarray | Sequence,
        scores: torch.Tensor | np.ndarray | Sequence,
        labels: torch.Tensor | np.ndarray | Sequence,
        scale: float | torch.Tensor,
    ) -> list[dict[str, Any]]:
        """Detections of one image, boxes xyxy in input pixels, as COCO result records
        (original-image xywh, original category ids) for ``coco.loadRes``."""
        boxes = np.asarray(torch.as_tensor(boxes, dtype=torch.float32).cpu()).reshape(-1, 4) / float(scale)
        scores = np.asarray(torch.as_tensor(scores, dtype=torch.float32).cpu()).reshape(-1)
        labels = np.asarray(torch.as_tensor(labels).cpu()).reshape(-1)
        if not len(boxes) == len(scores) == len(labels):
            raise ScalingLabError(
                f"detections of image {image_id}: {len(boxes)} boxes, {len(scores)} scores and "
                f"{len(labels)} labels; there must be as many of each"
            )
        if len(labels) and (labels.min() < 0 or labels.max() >= self.num_classes):
            raise ScalingLabError(
                f"detections of image {image_id}: label {int(labels.min() if labels.min() < 0 else labels.max())} "
                f"is not a class of {self.annotation_file}; valid labels are 0..{self.num_classes - 1}"
            )
        return [
            {
                "image_id": int(image_id),
                "category_id": self.label_to_category_id[int(label)],
                "bbox": [float(x1), float(y1), float(x2 - x1), float(y2 - y1)],
                "score": float(score),
            }
            for (x1, y1, x2, y2), score, label in zip(boxes, scores, labels)
        ]


LABEL_SPACES = ("contiguous", "category_ids")


def _label_space(category_ids: list[int], labels: str, path: Path) -> list[int]:
    """Label -> category id: the ids in order, or every id from 1 to the largest."""
    if labels not in LABEL_SPACES:
        raise ScalingLabError(f"labels {labels!r} is not valid; valid values are {', '.join(LABEL_SPACES)}")
    if labels == "contiguous" or not category_ids:
        return category_ids
    if min(category_ids) < 1:
        raise ScalingLabError(f"{path}: labels 'category_ids' needs category ids from 1 up; the file has id {min(category_ids)}")
    return list(range(1, max(category_ids) + 1))


def _read_annotation_file(path: Path) -> Any:
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise ScalingLabError(f"annotation file {path} does not exist") from None
    except IsADirectoryError:
        raise ScalingLabError(f"annotation file {path} is a folder; expected a COCO-format JSON file") from None
    try:
        return parse_json(data, f"annotation file {path}")
    except DocumentError as error:
        raise ScalingLabError(str(error).replace(f"annotation file {path}: not valid JSON", f"annotation file {path} is not valid JSON")) from None


def _box_problem(width: float, height: float, inside: list[float]) -> str | None:
    """Why a box is unusable: a size that is not positive, or no part inside its image."""
    if width <= 0 or height <= 0:
        return "has a width or height that is not positive"
    if inside[2] <= inside[0] or inside[3] <= inside[1]:
        return "lies entirely outside its image"
    return None


def _check_structure(data: Any, path: Path, skip: bool = False) -> dict[str, int]:
    """Every field the dataset, pycocotools and COCOeval rely on, with the right type
    (``iscrowd`` and ``area`` default to 0 and the box area). Duplicated image ids and unknown
    category ids are errors, or with ``skip`` dropped (an image id's later duplicates; boxes with
    an unknown category) and counted; returns those counts."""
    if not isinstance(data, dict):
        raise ScalingLabError(f"annotation file {path}: expected a JSON object with images, annotations and categories")
    for key in ("images", "annotations", "categories"):
        if not isinstance(data.get(key), list):
            raise ScalingLabError(f"annotation file {path}: key {key!r} is missing or not a list; COCO format needs it")
    skipped = {"images": 0, "annotations": 0}
    category_ids = _unique_ids(data["categories"], "categories", path)
    if skip:
        kept = _first_of_each_id(data["images"], "images", path)
        skipped["images"] += len(data["images"]) - len(kept)
        data["images"] = kept
    image_ids = _unique_ids(data["images"], "images", path)
    for image in data["images"]:
        where = f"annotation file {path}: image {image['id']}"
        if not isinstance(image.get("file_name"), str):
            raise ScalingLabError(f"{where}: 'file_name' is missing or not a string")
        for key in ("width", "height"):
            if not _is_number(image.get(key)) or not math.isfinite(image[key]) or image[key] <= 0:
                raise ScalingLabError(f"{where}: {key!r} is {image.get(key)!r}; expected a positive number of pixels")
    _unique_ids(data["annotations"], "annotations", path)
    if skip:
        kept = [a for a in data["annotations"] if a.get("category_id") in category_ids]
        skipped["annotations"] += len(data["annotations"]) - len(kept)
        data["annotations"] = kept
    for annotation in data["annotations"]:
        where = f"annotation file {path}: annotation {annotation['id']}"
        if annotation.get("image_id") not in image_ids:
            raise ScalingLabError(f"{where}: image_id {annotation.get('image_id')!r} is not one of the file's images")
        if annotation.get("category_id") not in category_ids:
            valid = ", ".join(map(str, sorted(category_ids)))
            raise ScalingLabError(
                f"{where}: unknown category_id {annotation.get('category_id')!r}; valid category ids are {valid} "
                "(or set task bad_data: skip to drop such annotations)"
            )
        bbox = annotation.get("bbox")
        if not isinstance(bbox, list) or len(bbox) != 4 or not all(map(_is_number, bbox)):
            raise ScalingLabError(f"{where}: bbox {bbox!r} must be [x, y, width, height] (4 numbers)")
    if skip:
        kept = [a for a in data["annotations"] if all(map(math.isfinite, a["bbox"]))]
        skipped["annotations"] += len(data["annotations"]) - len(kept)
        data["annotations"] = kept
    for annotation in data["annotations"]:
        if not all(map(math.isfinite, annotation["bbox"])):
            raise ScalingLabError(
                f"annotation file {path}: annotation {annotation['id']} (image {annotation['image_id']}): bbox {annotation['bbox']} "
                "has a coordinate that is not finite (NaN or infinite); fix it, or set task bad_data: skip to drop such boxes"
            )
        annotation.setdefault("iscrowd", 0)  # COCOeval needs both; converted datasets often omit them
        annotation.setdefault("area", max(annotation["bbox"][2], 0) * max(annotation["bbox"][3], 0))
    return skipped


def _first_of_each_id(records: list, key: str, path: Path) -> list:
    """The records without later ones repeating an id (each must have an integer id)."""
    _unique_ids(records, key, path, duplicates_ok=True)
    first: dict[int, dict] = {}
    for record in records:
        first.setdefault(record["id"], record)
    return list(first.values())


def _unique_ids(records: list, key: str, path: Path, duplicates_ok: bool = False) -> set:
    ids = set()
    for position, record in enumerate(records):
        if not isinstance(record, dict) or not isinstance(record.get("id"), int) or isinstance(record["id"], bool):
            raise ScalingLabError(f"annotation file {path}: {key}[{position}] has no integer 'id'")
        if record["id"] in ids and not duplicates_ok:
            hint = " (or set task bad_data: skip to keep the first)" if key == "images" else ""
            raise ScalingLabError(f"annotation file {path}: {key} id {record['id']} appears twice; ids must be unique{hint}")
        ids.add(record["id"])
    return ids


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _outside_problem(file_name: str, images_dir: Path) -> str | None:
    """Why a ``file_name`` is refused: it leaves the images folder (an absolute path, or ``..``
    past the folder), so an annotation file could make a study read any file on the machine."""
    joined = os.path.normpath(images_dir / file_name)
    if os.path.isabs(file_name) or os.path.relpath(joined, os.path.normpath(images_dir)).split(os.sep)[0] == "..":
        return f"leaves the images folder (resolved to {joined}); file_name must be a path inside it"
    return None


def _check_image_files(data: dict, images_dir: Path, annotation_file: Path, skip: bool, skipped: dict[str, int]) -> dict[str, int]:
    """Every listed image file checked from its header (``image_problem``): missing, not an
    image, a decompression bomb, truncated (PNG) or not the annotated size. An error naming the
    files, or with ``skip`` the images and their boxes dropped and counted."""
    bad = []
    for image in data["images"]:
        path = images_dir / image["file_name"]
        problem = _outside_problem(image["file_name"], images_dir) or image_problem(path, (image["height"], image["width"]))
        if problem:
            bad.append((image["id"], path, problem))
    if not bad:
        return skipped
    if not skip:
        named = "; ".join(f"{path.name} (image id {image_id}) {problem}" for image_id, path, problem in bad[:_MISSING_IMAGES_NAMED])
        more = f"; and {len(bad) - _MISSING_IMAGES_NAMED} more" if len(bad) > _MISSING_IMAGES_NAMED else ""
        raise ScalingLabError(
            f"{len(bad)} image file(s) listed in {annotation_file} cannot be used, in {images_dir}: {named}{more}. "
            "Fix or remove them, or set task bad_data: skip to train without them"
        )
    dropped = {image_id for image_id, _, _ in bad}
    kept = [a for a in data["annotations"] if a["image_id"] not in dropped]
    skipped = {"images": skipped["images"] + len(dropped), "annotations": skipped["annotations"] + len(data["annotations"]) - len(kept)}
    data["images"] = [image for image in data["images"] if image["id"] not in dropped]
    data["annotations"] = kept
    return skipped
