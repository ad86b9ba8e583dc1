"""Anchors, anchor matching and the box encoding, as in the official EfficientDet code.

Anchor order (the detector's heads follow it): level by level from ``min_level`` to
``max_level``; within a level row-major over the feature map (y, then x); within a location
scale-major, ``a = scale_index * len(aspect_ratios) + ratio_index``, as the official
``_generate_anchor_configs`` loops (octave scales outside, aspect ratios inside). Head channel
``a * K + k`` is class ``k`` of anchor ``a``, channel ``a * 4 + j`` its box delta ``j``.

Boxes are xyxy pixels of the input canvas. Deltas are the official Faster R-CNN coding without
scale factors, in the official order ``(ty, tx, th, tw)``:
``ty = (cy - cy_a) / h_a``, ``tx = (cx - cx_a) / w_a``, ``th = log(h / h_a)``, ``tw = log(w / w_a)``.

Matching, as the official code (and effdet) by default: an anchor whose best IoU with a
ground-truth box is >= 0.5 is positive for that box, below 0.5 negative (background). On top of
that every ground-truth box claims its best anchor (``force_match``), as the official
``ArgMaxMatcher(force_match_for_each_row=True)`` does, so small or thin boxes that reach no
anchor at IoU 0.5 still get a positive. ``negative_iou`` below ``positive_iou`` leaves a band of
ignored anchors (no class loss) between them: 0.4 is the RetinaNet rule the paper cites.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from scaling_lab.errors import ScalingLabError
from scaling_lab.resolution import Resolution, image_size, resolution_problem
from scaling_lab.spec import REFERENCE_ASPECT_RATIOS, AspectRatio, DetectorSpec, aspect_pair

POSITIVE_IOU = NEGATIVE_IOU = 0.5  # the official matcher's thresholds
NEGATIVE = -1  # class target of a background anchor
IGNORED = -2  # class target of an anchor left out of the class loss
# exp() of a larger log-size delta overflows to a box bigger than any canvas; clamp before it.
MAX_LOG_SIZE_DELTA = math.log(1000.0 / 16)
BOX_CODER_EPS = 1e-7  # effdet's box coder adds it to every box and anchor size before encoding


def generate_anchors(
    resolution: Resolution,
    min_level: int,
    max_level: int,
    num_scales: int = 3,
    aspect_ratios: tuple[AspectRatio, ...] = REFERENCE_ASPECT_RATIOS,
    anchor_scale: float = 4.0,
    device: torch.device | str | None = None,
) -> torch.Tensor:
    """All anchors [N, 4] (xyxy) of a ``resolution`` input (a side, or (height, width)), in the
    module's anchor order.

    At level l (stride s = 2^l) the anchor of octave scale 2^(i/num_scales) and aspect (x, y)
    (see ``spec.aspect_pair``: a ratio r is (√r, 1/√r)) is centred on (x + 0.5)·s, (y + 0.5)·s
    with width anchor_scale·s·2^(i/n)·x and height anchor_scale·s·2^(i/n)·y.
    """
    problem = resolution_problem(resolution, max_level=max_level)
    if problem:
        raise ScalingLabError(problem)
    height, width = image_size(resolution)
    scales = torch.tensor([2 ** (i / num_scales) for i in range(num_scales)], dtype=torch.float64)
    pairs = torch.tensor([aspect_pair(ratio) for ratio in aspect_ratios], dtype=torch.float64)  # [R, 2]
    half_widths = (scales.view(-1, 1) * pairs[:, 0].view(1, -1)).flatten() / 2  # [A], scale-major
    half_heights = (scales.view(-1, 1) * pairs[:, 1].view(1, -1)).flatten() / 2
    levels = []
    for level in range(min_level, max_level + 1):
        stride = 2**level
        centers_y = (torch.arange(height // stride, dtype=torch.float64) + 0.5) * stride
        centers_x = (torch.arange(width // stride, dtype=torch.float64) + 0.5) * stride
        center_y, center_x = torch.meshgrid(centers_y, centers_x, indexing="ij")
        center_x, center_y = center_x.reshape(-1, 1), center_y.reshape(-1, 1)  # [H*W, 1]
        base = anchor_scale * stride
        boxes = torch.stack(
            (
                center_x - base * half_widths,
                center_y - base * half_heights,
                center_x + base * half_widths,
                center_y + base * half_heights,
            ),
            dim=-1,
        )  # [H*W, A, 4]
        levels.append(boxes.reshape(-1, 4))
    return torch.cat(levels).to(device=device, dtype=torch.float32)


def anchors_for_spec(spec: DetectorSpec, device: torch.device | str | None = None) -> torch.Tensor:
    """The anchors [N, 4] matching a detector spec's head outputs."""
    return generate_anchors(
        spec.resolution, spec.min_level, spec.max_level, spec.num_scales, spec.aspect_ratios, spec.anchor_scale, device
    )


def flatten_levels(
    class_logits: list[torch.Tensor], box_deltas: list[torch.Tensor], num_classes: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-level head outputs ([B, A·K, H, W], [B, A·4, H, W]) -> [B, N, K] and [B, N, 4] in anchor order."""
    batch = class_logits[0].shape[0]
    classes = torch.cat([level.permute(0, 2, 3, 1).reshape(batch, -1, num_classes) for level in class_logits], 1)
    boxes = torch.cat([level.permute(0, 2, 3, 1).reshape(batch, -1, 4) for level in box_deltas], 1)
    return classes, boxes


def box_iou(boxes_a: torch.Tensor, boxes_b: torch.Tensor) -> torch.Tensor:
    """Pairwise IoU of xyxy boxes [..., N, 4] and [..., M, 4] -> [..., N, M] (0 for empty boxes).

    Written with in-place ops on [..., N, M] planes only: this is the memory-bound core of
    matching and NMS.
    """
    a_x1, a_y1, a_x2, a_y2 = (coordinate.unsqueeze(-1) for coordinate in boxes_a.unbind(-1))  # [..., N, 1]
    b_x1, b_y1, b_x2, b_y2 = (coordinate.unsqueeze(-2) for coordinate in boxes_b.unbind(-1))  # [..., 1, M]
    intersection = (torch.minimum(a_x2, b_x2) - torch.maximum(a_x1, b_x1)).clamp_(min=0)
    intersection *= (torch.minimum(a_y2, b_y2) - torch.maximum(a_y1, b_y1)).clamp_(min=0)
    area_a = (a_x2 - a_x1).clamp(min=0) * (a_y2 - a_y1).clamp(min=0)
    area_b = (b_x2 - b_x1).clamp(min=0) * (b_y2 - b_y1).clamp(min=0)
    union = (area_a + area_b) - intersection
    return intersection.div_(union.clamp_(min=1e-9))


def _centers_sizes(boxes: torch.Tensor) -> tuple[torch.Tensor, ...]:
    x1, y1, x2, y2 = boxes.unbind(-1)
    return (y1 + y2) / 2, (x1 + x2) / 2, y2 - y1, x2 - x1


def _coder_centers_sizes(boxes: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """Centres and sizes as effdet's box coder computes them: centre = min + size / 2 (not
    (min + max) / 2: the float rounding differs, and which targets come out exactly 0 with it),
    ``BOX_CODER_EPS`` added to every size."""
    x1, y1, x2, y2 = boxes.unbind(-1)
    height, width = (y2 - y1).clamp(min=0), (x2 - x1).clamp(min=0)
    return y1 + height / 2, x1 + width / 2, height + BOX_CODER_EPS, width + BOX_CODER_EPS


def encode_boxes(boxes: torch.Tensor, anchors: torch.Tensor) -> torch.Tensor:
    """xyxy boxes [..., N, 4] relative to anchors [N, 4] -> deltas (ty, tx, th, tw), computed as
    effdet's ``FasterRcnnBoxCoder.encode`` does, so that the same coordinates are exactly 0 (the
    box loss skips those)."""
    center_y, center_x, height, width = _coder_centers_sizes(boxes)
    anchor_y, anchor_x, anchor_height, anchor_width = _coder_centers_sizes(anchors)
    return torch.stack(
        (
            (center_y - anchor_y) / anchor_height,
            (center_x - anchor_x) / anchor_width,
            torch.log(height / anchor_height),
            torch.log(width / anchor_width),
        ),
        dim=-1,
    )


def decode_boxes(deltas: torch.Tensor, anchors: torch.Tensor) -> torch.Tensor:
    """Deltas (ty, tx, th, tw) [..., N, 4] on anchors [..., N, 4] -> xyxy boxes (the inverse of
    :func:`encode_boxes`); computed in float32 whatever the deltas' dtype."""
    ty, tx, th, tw = deltas.float().unbind(-1)
    anchor_y, anchor_x, anchor_height, anchor_width = _centers_sizes(anchors)
    center_y = ty * anchor_height + anchor_y
    center_x = tx * anchor_width + anchor_x
    half_height = torch.exp(th.clamp(max=MAX_LOG_SIZE_DELTA)) * anchor_height / 2
    half_width = torch.exp(tw.clamp(max=MAX_LOG_SIZE_DELTA)) * anchor_width / 2
    return torch.stack((center_x - half_width, center_y - half_height, center_x + half_width, center_y + half_height), -1)


@dataclass
class AnchorTargets:
    """Per-anchor training targets of a batch.

    ``classes`` [B, N] holds the matched class, ``NEGATIVE`` (-1) or ``IGNORED`` (-2); ``boxes``
    [B, N, 4] the encoded deltas of the matched ground truth (zeros where not positive).
    """

    classes: torch.Tensor
    boxes: torch.Tensor

    @property
    def positive(self) -> torch.Tensor:
        return self.classes >= 0


def match_anchors(
    anchors: torch.Tensor,
    gt_boxes: torch.Tensor,
    gt_labels: torch.Tensor,
    positive_iou: float = POSITIVE_IOU,
    negative_iou: float = NEGATIVE_IOU,
    force_match: bool = True,
) -> AnchorTargets:
    """Label every anchor of every image at once (no loop over images or anchors).

    ``gt_boxes`` [B, M, 4] xyxy and ``gt_labels`` [B, M] (-1 = padding), on the anchors' device.
    Each anchor takes its highest-IoU ground truth: positive at >= ``positive_iou``, negative
    below ``negative_iou``, ignored in between. With ``force_match`` each ground truth's best
    anchor is positive for it as well; when several ground truths pick the same anchor the
    first listed wins, as in effdet's ``ArgMaxMatcher`` (whatever their IoUs); ties between
    anchors go to the first in anchor order.
    """
    valid = gt_labels >= 0  # [B, M]
    gt_boxes = gt_boxes.float() * valid.unsqueeze(-1)  # padding as empty boxes: IoU 0 with every anchor
    iou = box_iou(anchors, gt_boxes)  # [B, N, M]
    best_iou, best_gt = iou.max(dim=2)  # [B, N]
    classes = torch.where(best_iou < negative_iou, NEGATIVE, IGNORED)
    positive = best_iou >= positive_iou
    if force_match:
        gt_best_iou, best_anchor = iou.max(dim=1)  # [B, M]
        count = gt_labels.shape[1]  # an index past every ground truth: no claim
        gt_index = torch.arange(count, device=gt_labels.device).expand_as(gt_labels)
        claims = torch.where(valid & (gt_best_iou > 0), gt_index, count)
        claimed_gt = torch.full_like(best_gt, count).scatter_reduce(1, best_anchor, claims, "amin")
        forced = claimed_gt < count
        best_gt = torch.where(forced, claimed_gt, best_gt)
        positive = positive | forced
    matched_labels = torch.gather(gt_labels, 1, best_gt)
    classes = torch.where(positive, matched_labels, classes)
    matched_boxes = torch.gather(gt_boxes, 1, best_gt.unsqueeze(-1).expand(-1, -1, 4))
    box_targets = encode_boxes(matched_boxes, anchors) * positive.unsqueeze(-1)
    return AnchorTargets(classes=classes, boxes=box_targets)
