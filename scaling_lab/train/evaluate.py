"""Validation metrics: COCO box AP through pycocotools' COCOeval, and top-1/top-5 accuracy.

Detection metrics are fractions in [0, 1]. COCOeval reports -1 for an area range without any
ground truth (say, no large objects among the evaluated images); those become NaN here, so that
tables and plots treat them as missing instead of averaging a -1 in.
"""

from __future__ import annotations

import contextlib
import io
import math
from typing import Any, Iterable

import torch
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval
from torch import nn

from scaling_lab.schema import CLASSIFICATION_METRICS, DETECTION_METRICS
from scaling_lab.train.anchors import flatten_levels
from scaling_lab.train.bootstrap import bootstrap_ap
from scaling_lab.train.postprocess import Detections, postprocess



def coco_metrics(coco_gt: COCO, results: list[dict[str, Any]], image_ids: Iterable[int], verbose: bool = False) -> dict[str, float]:
    """COCOeval (bbox) of result records on ``image_ids`` only; no detections at all scores 0.

    Besides COCOeval's six numbers: the 95 % bootstrap intervals of AP and AP50 over the images
    (``schema.BOOTSTRAPPED_METRICS``, see ``scaling_lab.train.bootstrap``), from the same per-image matches."""
    image_ids = sorted(set(image_ids))
    quiet = contextlib.nullcontext() if verbose else contextlib.redirect_stdout(io.StringIO())
    with quiet:
        if results:
            coco_dt = coco_gt.loadRes(results)
        else:  # loadRes cannot take an empty list; an empty result set scores 0 where defined
            coco_dt = COCO()
            coco_dt.dataset = {"images": coco_gt.dataset["images"], "categories": coco_gt.dataset["categories"], "annotations": []}
            coco_dt.createIndex()
        evaluator = COCOeval(coco_gt, coco_dt, "bbox")
        evaluator.params.imgIds = image_ids
        evaluator.evaluate()
        evaluator.accumulate()
        evaluator.summarize()
    metrics = {name: float(value) if value >= 0 else math.nan for name, value in zip(DETECTION_METRICS, evaluator.stats)}
    return {**metrics, **bootstrap_ap(evaluator)}


def detection_results(dataset, detections: Detections, image_ids: list[int], scales: torch.Tensor) -> list[dict[str, Any]]:
    """COCO result records (original image pixels, original category ids) of a batch's detections."""
    boxes, scores, labels, valid = (tensor.cpu() for tensor in (detections.boxes, detections.scores, detections.labels, detections.valid))
    records = []
    for row, (image_id, scale) in enumerate(zip(image_ids, scales.tolist())):
        kept = valid[row]
        records += dataset.coco_results(image_id, boxes[row][kept], scores[row][kept], labels[row][kept], scale)
    return records


def _autocast(device: torch.device, amp_dtype: torch.dtype | None):
    return torch.autocast(device.type, dtype=amp_dtype, enabled=amp_dtype is not None)


@torch.no_grad()
def evaluate_detector(
    model: nn.Module,
    loader,
    anchors: torch.Tensor,
    amp_dtype: torch.dtype | None = None,
    channels_last: bool = False,
    verbose: bool = False,
) -> dict[str, float]:
    """COCO metrics of ``model`` over an eval-mode ``DetectionLoader`` (on the model's device)."""
    was_training = model.training
    model.eval()
    dataset = loader.dataset
    records, image_ids = [], []
    try:
        for batch in loader:
            images = batch.images.contiguous(memory_format=torch.channels_last) if channels_last else batch.images
            with _autocast(images.device, amp_dtype):
                class_logits, box_deltas = model(images)
            class_logits, box_deltas = flatten_levels(class_logits, box_deltas, dataset.num_classes)
            detections = postprocess(class_logits, box_deltas, anchors, image_size=images.shape[-1])
            records += detection_results(dataset, detections, batch.image_ids, batch.scales)
            image_ids += batch.image_ids
    finally:
        model.train(was_training)
    return coco_metrics(dataset.coco, records, image_ids, verbose)


def topk_correct(logits: torch.Tensor, labels: torch.Tensor, ks: tuple[int, ...] = (1, 5)) -> list[torch.Tensor]:
    """How many of the batch have their label among the top k logits, for each k (capped at the class count)."""
    top = logits.topk(min(max(ks), logits.shape[1]), dim=1).indices
    hits = top == labels.unsqueeze(1)
    return [hits[:, :k].any(dim=1).sum() for k in ks]


@torch.no_grad()
def evaluate_classifier(model: nn.Module, loader, amp_dtype: torch.dtype | None = None, channels_last: bool = False) -> dict[str, float]:
    """Top-1 and top-5 accuracy (fractions) of ``model`` over an eval-mode classification loader."""
    was_training = model.training
    model.eval()
    correct = torch.zeros(len(CLASSIFICATION_METRICS), dtype=torch.int64)
    seen = 0
    try:
        for images, labels in loader:
            images = images.contiguous(memory_format=torch.channels_last) if channels_last else images
            with _autocast(images.device, amp_dtype):
                logits = model(images)
            correct += torch.stack(topk_correct(logits.float(), labels)).cpu()
            seen += len(labels)
    finally:
        model.train(was_training)
    return {name: float(count) / max(seen, 1) for name, count in zip(CLASSIFICATION_METRICS, correct.tolist())}
