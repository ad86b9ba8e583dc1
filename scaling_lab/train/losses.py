"""The official EfficientDet loss: focal class loss + weighted Huber box loss.

Both are sums over the batch divided by (number of positive anchors in the batch + 1), the
official normalizer; the box loss is further divided by 4 (one term per coordinate) and weighted
by 50. Ignored anchors add no class loss; box loss comes from the coordinates whose target is
non-zero, the official mask (background anchors have all-zero targets; a positive anchor's
coordinate whose target is exactly 0, a box centred on its anchor or of its exact size, adds no
term either). Everything is computed in float32 whatever the outputs' dtype (bf16 autocast).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from scaling_lab.train.anchors import IGNORED, AnchorTargets

FOCAL_ALPHA = 0.25
FOCAL_GAMMA = 1.5
HUBER_DELTA = 0.1
BOX_LOSS_WEIGHT = 50.0


@dataclass
class DetectionLoss:
    total: torch.Tensor
    classes: torch.Tensor
    boxes: torch.Tensor


def focal_loss(
    logits: torch.Tensor, targets: torch.Tensor, alpha: float = FOCAL_ALPHA, gamma: float = FOCAL_GAMMA
) -> torch.Tensor:
    """Element-wise sigmoid focal loss alpha_t·(1 - p_t)^gamma·BCE(logits, targets), targets in {0, 1}.

    With z = -logit for a positive and +logit for a negative, 1 - p_t = sigmoid(z) and
    BCE = softplus(z): a few fused-friendly passes over [B, N, K] instead of a dozen, and stable
    for large logits.
    """
    positive = targets > 0.5
    signed = torch.where(positive, -logits, logits)
    alpha_t = torch.where(positive, alpha, 1 - alpha)
    return alpha_t * torch.sigmoid(signed).pow(gamma) * F.softplus(signed)


def huber_loss(predictions: torch.Tensor, targets: torch.Tensor, delta: float = HUBER_DELTA) -> torch.Tensor:
    """Element-wise Huber loss (TF convention: 0.5·x² inside delta, delta·(|x| - 0.5·delta) outside)."""
    return F.huber_loss(predictions, targets, reduction="none", delta=delta)


def detection_loss(
    class_logits: torch.Tensor,
    box_deltas: torch.Tensor,
    targets: AnchorTargets,
    alpha: float = FOCAL_ALPHA,
    gamma: float = FOCAL_GAMMA,
    delta: float = HUBER_DELTA,
    box_weight: float = BOX_LOSS_WEIGHT,
    positives: torch.Tensor | None = None,
) -> DetectionLoss:
    """Loss of flattened outputs [B, N, K] and [B, N, 4] (see ``anchors.flatten_levels``).

    ``positives``: the positive anchors of the whole global batch when this is a worker's share
    of it (the official cross-replica normalizer); by default this batch's."""
    class_logits, box_deltas = class_logits.float(), box_deltas.float()
    positive = targets.positive
    normalizer = (positive.sum() if positives is None else positives) + 1.0
    one_hot = torch.zeros_like(class_logits)
    one_hot.scatter_(-1, targets.classes.clamp(min=0).unsqueeze(-1), positive.unsqueeze(-1).to(one_hot.dtype))
    counted = (targets.classes != IGNORED).unsqueeze(-1).to(class_logits.dtype)
    class_loss = (focal_loss(class_logits, one_hot, alpha, gamma) * counted).sum() / normalizer
    box_terms = huber_loss(box_deltas, targets.boxes, delta) * (targets.boxes != 0)
    box_loss = box_terms.sum() / (4 * normalizer)
    return DetectionLoss(total=class_loss + box_weight * box_loss, classes=class_loss, boxes=box_loss)
