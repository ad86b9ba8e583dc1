"""Bootstrap intervals of COCO AP and AP50 over validation images, from one COCOeval run.

``COCOeval.evaluate()`` matches detections to ground truth per image and category; ``accumulate``
then pools all images. A bootstrap replicate resamples the images with replacement; an image drawn
``w`` times counts ``w`` times in the pooled true/false-positive sums and the ground-truth count,
so a replicate is re-accumulated from the stored matches with image weights, without running the
model or the matching again. The re-accumulation follows ``COCOeval.accumulate`` (area "all",
the largest maxDets, 101-point interpolated precision); with all weights 1 it gives COCOeval's AP.

The replicates are kept (``schema.BOOTSTRAP_COLUMN``) with a fingerprint of the resampling: the
seed, the replicate count and the image ids. Two trials scored on the same images draw the same
image weights replicate by replicate, so the differences of their replicates are a paired
bootstrap over images (``scaling_lab.stats.paired_image_comparison``).
"""

from __future__ import annotations

import hashlib
import json
import warnings
from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np
from pycocotools.cocoeval import COCOeval

from scaling_lab.schema import BOOTSTRAP_COLUMN, interval_columns
from scaling_lab.stats import percentile_interval

BOOTSTRAP_REPLICATES = 200
BOOTSTRAP_SEED = 0
_CHUNK_VALUES = 4_000_000  # replicates x iou thresholds x detections re-accumulated at once (memory bound)


@dataclass(frozen=True)
class _Category:
    images: np.ndarray  # image index of each detection, in pooled score order
    true_positive: np.ndarray  # (iou thresholds, detections) bool
    false_positive: np.ndarray
    ground_truth: np.ndarray  # non-ignored ground-truth boxes per image index


def _categories(evaluator: COCOeval) -> list[_Category]:
    """Per category, the pooled matches of area "all" that ``accumulate`` would sort."""
    params = evaluator.params
    image_count, area_count = len(params.imgIds), len(params.areaRng)
    max_dets = params.maxDets[-1]
    thresholds = len(params.iouThrs)
    categories = []
    for k in range(len(params.catIds) if params.useCats else 1):
        entries = [(i, evaluator.evalImgs[k * area_count * image_count + i]) for i in range(image_count)]
        entries = [(i, e) for i, e in entries if e is not None]
        ground_truth = np.zeros(image_count)
        for i, e in entries:
            ground_truth[i] = np.count_nonzero(np.asarray(e["gtIgnore"]) == 0)
        if not entries:
            categories.append(_Category(np.zeros(0, int), np.zeros((thresholds, 0), bool), np.zeros((thresholds, 0), bool), ground_truth))
            continue
        scores = np.concatenate([np.asarray(e["dtScores"][:max_dets], dtype=float) for _, e in entries])
        images = np.concatenate([np.full(len(e["dtScores"][:max_dets]), i) for i, e in entries]).astype(int)
        matched = np.concatenate([np.asarray(e["dtMatches"])[:, :max_dets].reshape(thresholds, -1) for _, e in entries], axis=1)
        ignored = np.concatenate([np.asarray(e["dtIgnore"])[:, :max_dets].reshape(thresholds, -1) for _, e in entries], axis=1).astype(bool)
        order = np.argsort(-scores, kind="mergesort")
        matched, ignored = matched[:, order] > 0, ignored[:, order]
        categories.append(_Category(images[order], matched & ~ignored, ~matched & ~ignored, ground_truth))
    return categories


def _precision(category: _Category, weights: np.ndarray, recall_thresholds: np.ndarray) -> np.ndarray:
    """Interpolated precision (replicates, iou thresholds, recall thresholds); NaN where a
    replicate has no ground truth of the category (COCOeval's -1).

    Recall rises only at true positives and precision only falls between them, so COCOeval's
    "highest precision at this recall or beyond" is found among the true positives alone: the
    pooled counts are taken at those positions only (a fraction of all detections)."""
    replicates, thresholds = weights.shape[0], category.true_positive.shape[0]
    ground_truth = weights @ category.ground_truth  # (replicates,)
    result = np.zeros((replicates, thresholds, len(recall_thresholds)))
    weight = weights[:, category.images]  # (replicates, detections)
    counted = category.true_positive | category.false_positive  # not ignored
    shared = np.cumsum(weight, axis=1) if counted.all() else None
    for t in range(thresholds):
        positions = np.flatnonzero(category.true_positive[t])
        if positions.size == 0:
            continue
        true = np.cumsum(weight[:, positions], axis=1)
        pooled = (shared if shared is not None else np.cumsum(weight * counted[t], axis=1))[:, positions]
        precision = true / (pooled + np.spacing(1))
        precision = np.flip(np.maximum.accumulate(np.flip(precision, axis=1), axis=1), axis=1)
        with np.errstate(invalid="ignore", divide="ignore"):
            recall = np.nan_to_num(true / ground_truth[:, None], nan=0.0)
        count = positions.size
        found = _first_reaching(recall, recall_thresholds)
        values = np.take_along_axis(precision, np.minimum(found, count - 1), axis=1)
        result[:, t] = np.where(found < count, values, 0.0)
    result[ground_truth == 0] = np.nan
    return result


def _first_reaching(recall: np.ndarray, thresholds: np.ndarray) -> np.ndarray:
    """Per row of non-decreasing ``recall``, COCOeval's ``searchsorted(recall, thresholds, "left")``
    (how many recalls lie below each threshold), exactly and for all rows at once: each recall is
    ranked among the shared thresholds (``k`` = thresholds at or below it; it lies below threshold
    ``j`` iff ``k <= j``), then counted per row in integers. (Shifting each row by an offset into
    one sorted array rounds: recall 0.7 once passed the threshold 0.7000000000000001.)"""
    rows, bins = recall.shape[0], thresholds.size + 1
    ranks = np.searchsorted(thresholds, recall, side="right") + bins * np.arange(rows)[:, None]
    counts = np.bincount(ranks.ravel(), minlength=rows * bins).reshape(rows, bins)
    return np.cumsum(counts, axis=1)[:, : thresholds.size]


def _ap(categories: list[_Category], weights: np.ndarray, evaluator: COCOeval) -> tuple[np.ndarray, np.ndarray]:
    """AP and AP50 of each weight row (replicate)."""
    params = evaluator.params
    recall_thresholds = np.asarray(params.recThrs, dtype=float)
    at_50 = int(np.argmin(np.abs(np.asarray(params.iouThrs) - 0.5)))
    precisions = np.stack([_precision(c, weights, recall_thresholds) for c in categories], axis=1)  # (B, K, T, R)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # a replicate without any ground truth: NaN
        ap = np.nanmean(precisions.reshape(len(weights), -1), axis=1)
        ap50 = np.nanmean(precisions[:, :, at_50].reshape(len(weights), -1), axis=1)
    return ap, ap50


def reaccumulate(evaluator: COCOeval, weights: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """AP and AP50 of an evaluated COCOeval under image weights (replicates x images, in
    ``params.imgIds`` order); a row of ones reproduces ``stats[0]`` and ``stats[1]``."""
    return _ap(_categories(evaluator), np.atleast_2d(np.asarray(weights, dtype=float)), evaluator)


def resampling(image_ids: Sequence[int], replicates: int, seed: int) -> str:
    """The fingerprint of a bootstrap's resampling: equal for two trials exactly when their
    replicates drew the same image weights (same images in the same order, seed and count)."""
    text = json.dumps({"images": [int(i) for i in image_ids], "replicates": replicates, "seed": seed})
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def bootstrap_replicates(
    evaluator: COCOeval, replicates: int = BOOTSTRAP_REPLICATES, seed: int = BOOTSTRAP_SEED
) -> dict[str, np.ndarray]:
    """AP and AP50 of each of ``replicates`` resamplings of the validation images. The image
    weights are drawn for all replicates at once, so they depend only on the seed, the count
    and the images (not on the chunks re-accumulated at once)."""
    categories = _categories(evaluator)
    image_count = len(evaluator.params.imgIds)
    weights = np.random.default_rng(seed).multinomial(image_count, np.full(image_count, 1 / image_count), size=replicates).astype(float)
    largest = max((c.true_positive.size for c in categories), default=1)
    chunk = int(np.clip(_CHUNK_VALUES // max(largest, 1), 1, replicates))
    ap, ap50 = [], []
    for start in range(0, replicates, chunk):
        chunk_ap, chunk_ap50 = _ap(categories, weights[start : start + chunk], evaluator)
        ap.append(chunk_ap)
        ap50.append(chunk_ap50)
    return {"AP": np.concatenate(ap), "AP50": np.concatenate(ap50)}


def bootstrap_ap(
    evaluator: COCOeval, replicates: int = BOOTSTRAP_REPLICATES, seed: int = BOOTSTRAP_SEED
) -> dict[str, Any]:
    """95 % percentile intervals of AP and AP50 over resampled validation images:
    ``AP_ci_low``, ``AP_ci_high``, ``AP50_ci_low``, ``AP50_ci_high`` (fractions), and under
    ``schema.BOOTSTRAP_COLUMN`` the replicates with their ``resampling`` fingerprint."""
    values = bootstrap_replicates(evaluator, replicates, seed)
    intervals = {column: bound for metric, found in values.items() for column, bound in zip(interval_columns(metric), percentile_interval(found))}
    kept = {"resampling": resampling(evaluator.params.imgIds, replicates, seed), **{metric: found.tolist() for metric, found in values.items()}}
    return {**intervals, BOOTSTRAP_COLUMN: kept}
