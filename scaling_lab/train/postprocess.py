"""From head outputs to at most ``max_detections`` boxes per image, for the whole batch at once.

Scores are sigmoids of the class logits. The ``pre_nms_top_k`` highest (anchor, class) scores of
each image over all levels are decoded, suppressed by class-aware greedy NMS and the best
``max_detections`` survivors kept. NMS is exact greedy NMS over the whole batch at once (see
:func:`batched_nms`): no torchvision and no loop over images.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from scaling_lab.train.anchors import box_iou, decode_boxes

PRE_NMS_TOP_K = 5000  # the official max_detection_points
NMS_IOU = 0.5
MAX_DETECTIONS = 100
MIN_SCORE = 0.0  # the reference keeps any score; a positive floor drops candidates before NMS
NMS_BLOCK = 128  # candidates settled per step of batched_nms


@dataclass
class Detections:
    """Padded detections of a batch, best first: ``boxes`` [B, D, 4] xyxy, ``scores`` [B, D],
    ``labels`` [B, D] (contiguous class index); ``valid`` [B, D] marks the real ones."""

    boxes: torch.Tensor
    scores: torch.Tensor
    labels: torch.Tensor
    valid: torch.Tensor


def batched_nms(
    boxes: torch.Tensor, scores: torch.Tensor, labels: torch.Tensor, iou_threshold: float = NMS_IOU, max_kept: int | None = None
) -> torch.Tensor:
    """Class-aware greedy NMS per image: boxes [B, C, 4], scores [B, C], labels [B, C] -> keep [B, C] bool.

    A candidate is kept when no higher-scoring kept candidate of the same image and class
    overlaps it by more than ``iou_threshold``. Candidates are settled in score order, a block
    at a time for the whole batch: the candidates kept so far (gathered to the front, padded to
    the most any image kept) are applied to the block in one [B, kept, block] operation, then the
    block settles itself (see :func:`_settle_block`). With ``max_kept`` the blocks stop once every
    image has that many survivors: the candidates left are never among an image's best
    ``max_kept`` survivors, and the cost stays that of the few hundred candidates needed instead
    of all C.
    """
    order = scores.argsort(dim=1, descending=True)
    sorted_boxes = torch.gather(boxes, 1, order.unsqueeze(-1).expand(-1, -1, 4))
    sorted_labels = torch.gather(labels, 1, order)
    count = scores.shape[1]
    keep = torch.zeros_like(sorted_labels, dtype=torch.bool)
    for start in range(0, count, NMS_BLOCK):
        end = min(start + NMS_BLOCK, count)
        block_boxes, block_labels = sorted_boxes[:, start:end], sorted_labels[:, start:end]
        kept_counts = keep[:, :start].sum(dim=1)
        most = int(kept_counts.max()) if kept_counts.numel() else 0
        # Kept candidates first, in score order (a stable sort of "not kept"), the rest masked out.
        kept_index = torch.sort((~keep[:, :start]).to(torch.uint8), dim=1, stable=True).indices[:, :most]
        kept_boxes = torch.gather(sorted_boxes, 1, kept_index.unsqueeze(-1).expand(-1, -1, 4))
        kept_labels = torch.gather(sorted_labels, 1, kept_index)
        suppressed = box_iou(kept_boxes, block_boxes) > iou_threshold  # [B, kept, block]
        suppressed &= kept_labels[:, :, None] == block_labels[:, None, :]
        suppressed &= (torch.arange(most, device=keep.device) < kept_counts[:, None])[:, :, None]
        within = box_iou(block_boxes, block_boxes) > iou_threshold
        within &= block_labels[:, :, None] == block_labels[:, None, :]
        keep[:, start:end] = _settle_block(~suppressed.any(dim=1), within.triu(diagonal=1))
        if max_kept is not None and bool((keep.sum(dim=1) >= max_kept).all()):
            break
    return torch.zeros_like(keep).scatter(1, order, keep)


def _settle_block(candidates: torch.Tensor, suppresses: torch.Tensor) -> torch.Tensor:
    """Greedy NMS inside a block: ``candidates`` [B, n] (not suppressed from outside it),
    ``suppresses`` [B, n, n] (i before j overlaps j; upper triangular) -> kept [B, n].

    Greedy NMS is the one fixed point of "kept when a candidate and no kept one before it
    suppresses it": each entry depends only on earlier ones, so iterating that rule from the
    candidates fixes at least one more entry per round and stops at the greedy answer after the
    longest chain of suppressions plus one round (a few on detector outputs; a block-long chain
    at worst, as many steps as a walk one candidate at a time)."""
    kept = candidates
    while True:
        update = candidates & ~(suppresses & kept[:, :, None]).any(dim=1)
        if torch.equal(update, kept):
            return kept
        kept = update


def postprocess(
    class_logits: torch.Tensor,
    box_deltas: torch.Tensor,
    anchors: torch.Tensor,
    pre_nms_top_k: int = PRE_NMS_TOP_K,
    iou_threshold: float = NMS_IOU,
    max_detections: int = MAX_DETECTIONS,
    min_score: float = MIN_SCORE,
    image_sizes: torch.Tensor | None = None,
) -> Detections:
    """Flattened outputs [B, N, K] and [B, N, 4] on anchors [N, 4] -> :class:`Detections`.

    Boxes are in input pixels; with ``image_sizes`` [B, 2] (height, width of each image's area
    of the input, the rest padding) they are clipped to that area before NMS, as effdet clips to
    the image's size (``generate_detections``).
    """
    batch, _, num_classes = class_logits.shape
    flat_logits = class_logits.float().reshape(batch, -1)
    top_k = min(pre_nms_top_k, flat_logits.shape[1])
    if min_score > 0:  # candidates below min_score are dropped anyway: keep them out of the NMS
        min_logit = math.log(min_score / (1 - min_score))
        top_k = max(1, min(top_k, int((flat_logits >= min_logit).sum(dim=1).max())))
    top_logits, top_index = flat_logits.topk(top_k, dim=1)
    anchor_index, labels = top_index // num_classes, top_index % num_classes
    scores = torch.sigmoid(top_logits)
    deltas = torch.gather(box_deltas, 1, anchor_index.unsqueeze(-1).expand(-1, -1, 4))
    boxes = decode_boxes(deltas, anchors[anchor_index])
    if image_sizes is not None:
        limits = image_sizes.to(boxes).flip(-1).repeat(1, 2).unsqueeze(1)  # [B, 1, 4]: (w, h, w, h)
        boxes = torch.minimum(boxes.clamp(min=0), limits)
    keep = batched_nms(boxes, scores, labels, iou_threshold, max_detections) & (scores >= min_score)
    final_scores, final_index = torch.where(keep, scores, -1.0).topk(min(max_detections, top_k), dim=1)
    padding = max_detections - final_index.shape[1]  # fewer candidates than max_detections: pad
    return Detections(
        boxes=F.pad(torch.gather(boxes, 1, final_index.unsqueeze(-1).expand(-1, -1, 4)), (0, 0, 0, padding)),
        scores=F.pad(final_scores.clamp(min=0), (0, padding)),
        labels=F.pad(torch.gather(labels, 1, final_index), (0, padding)),
        valid=F.pad(final_scores >= 0, (0, padding)),
    )
