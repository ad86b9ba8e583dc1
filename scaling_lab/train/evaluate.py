"""Validation metrics: COCO box AP through pycocotools' COCOeval, and top-1/top-5 accuracy.

Detection metrics are fractions in [0, 1]. COCOeval reports -1 for an area range without any
ground truth (say, no large objects among the evaluated images); those become NaN here, so that
tables and plots treat them as missing instead of averaging a -1 in.
"""

from __future__ import annotations

import contextlib
import io
import math
from typing import Any, Iterable, Mapping

import torch
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval
from torch import nn

from scaling_lab.schema import BOOTSTRAP_COLUMN, CLASSIFICATION_METRICS, DETECTION_METRICS
from scaling_lab.train.anchors import flatten_levels
from scaling_lab.train.bootstrap import bootstrap_ap
from scaling_lab.train.postprocess import Detections, postprocess
from scaling_lab.train.precision import Precision
from scaling_lab.train.replicas import ONE_PROCESS, Replicas


def coco_metrics(coco_gt: COCO, results: list[dict[str, Any]], image_ids: Iterable[int], verbose: bool = False) -> dict[str, Any]:
    """COCOeval (bbox) of result records on ``image_ids`` only; no detections at all scores 0.

    Besides COCOeval's six numbers: the 95 % bootstrap intervals of AP and AP50 over the images
    (``schema.interval_columns``, see ``scaling_lab.train.bootstrap``), from the same per-image
    matches, and the bootstrap's replicates under ``schema.BOOTSTRAP_COLUMN`` (``split_bootstrap``)."""
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


def split_bootstrap(evaluated: Mapping[str, Any]) -> tuple[dict[str, float], dict[str, Any]]:
    """An evaluation's metrics (numbers only) and its bootstrap replicates (empty when it has none)."""
    metrics = {name: value for name, value in evaluated.items() if name != BOOTSTRAP_COLUMN}
    return metrics, dict(evaluated.get(BOOTSTRAP_COLUMN) or {})


def detection_results(dataset, detections: Detections, image_ids: list[int], scales: torch.Tensor) -> list[dict[str, Any]]:
    """COCO result records (original image pixels, original category ids) of a batch's detections."""
    boxes, scores, labels, valid = (tensor.cpu() for tensor in (detections.boxes, detections.scores, detections.labels, detections.valid))
    records = []
    for row, (image_id, scale) in enumerate(zip(image_ids, scales.tolist())):
        kept = valid[row]
        records += dataset.coco_results(image_id, boxes[row][kept], scores[row][kept], labels[row][kept], scale)
    return records


@torch.no_grad()
def detection_records(model: nn.Module, loader, anchors: torch.Tensor, precision: Precision) -> tuple[list[dict[str, Any]], list[int]]:
    """COCO result records of ``model`` over an eval-mode ``DetectionLoader``, and the image ids seen."""
    was_training = model.training
    model.eval()
    dataset = loader.dataset
    records, image_ids = [], []
    try:
        for batch in loader:
            images = precision.images(batch.images)
            with precision.autocast():
                class_logits, box_deltas = model(images)
            class_logits, box_deltas = flatten_levels(class_logits, box_deltas, dataset.num_classes)
            detections = postprocess(class_logits, box_deltas, anchors, image_sizes=batch.sizes)
            records += detection_results(dataset, detections, batch.image_ids, batch.scales)
            image_ids += batch.image_ids
    finally:
        model.train(was_training)
    return records, image_ids


def evaluate_detector(
    model: nn.Module, loader, anchors: torch.Tensor, precision: Precision, replicas: Replicas = ONE_PROCESS, verbose: bool = False
) -> dict[str, Any]:
    """COCO metrics of ``model`` over an eval-mode ``DetectionLoader`` (on the model's device;
    ``coco_metrics``' keys); with workers, each validates its share and rank 0 scores everyone's records in one COCOeval."""
    records, image_ids = detection_records(model, loader, anchors, precision)
    records, image_ids = replicas.gather(records), replicas.gather(image_ids)
    metrics = coco_metrics(loader.dataset.coco, records, image_ids, verbose) if replicas.is_main else None
    return replicas.broadcast(metrics)


def topk_correct(logits: torch.Tensor, labels: torch.Tensor, ks: tuple[int, ...] = (1, 5)) -> list[torch.Tensor]:
    """How many of the batch have their label among the top k logits, for each k (capped at the class count)."""
    top = logits.topk(min(max(ks), logits.shape[1]), dim=1).indices
    hits = top == labels.unsqueeze(1)
    return [hits[:, :k].any(dim=1).sum() for k in ks]


@torch.no_grad()
def evaluate_classifier(model: nn.Module, loader, precision: Precision, replicas: Replicas = ONE_PROCESS) -> dict[str, float]:
    """Top-1 and top-5 accuracy (fractions) of ``model`` over an eval-mode classification loader
    (with workers: over all workers' shares)."""
    was_training = model.training
    model.eval()
    correct = torch.zeros(len(CLASSIFICATION_METRICS) + 1, dtype=torch.int64)  # and the images seen
    try:
        for images, labels in loader:
            with precision.autocast():
                logits = model(precision.images(images))
            correct += torch.stack([*topk_correct(logits.float(), labels), torch.tensor(len(labels), device=labels.device)]).cpu()
    finally:
        model.train(was_training)
    *hits, seen = replicas.sum(correct).tolist()
    return {name: float(count) / max(seen, 1) for name, count in zip(CLASSIFICATION_METRICS, hits)}
