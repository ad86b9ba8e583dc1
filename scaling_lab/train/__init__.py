"""Training and evaluation: anchors and matching, the EfficientDet loss, post-processing,
COCO/top-k metrics, and ``run_trial``, the one call studies make."""

from scaling_lab.train.anchors import (
    AnchorTargets,
    anchors_for_spec,
    box_iou,
    decode_boxes,
    encode_boxes,
    flatten_levels,
    generate_anchors,
    match_anchors,
)
from scaling_lab.train.evaluate import coco_metrics, evaluate_classifier, evaluate_detector
from scaling_lab.train.losses import DetectionLoss, detection_loss, focal_loss
from scaling_lab.train.postprocess import Detections, batched_nms, postprocess
from scaling_lab.train.trainer import TrainingDiverged, run_trial

__all__ = [
    "AnchorTargets",
    "DetectionLoss",
    "Detections",
    "TrainingDiverged",
    "anchors_for_spec",
    "batched_nms",
    "box_iou",
    "coco_metrics",
    "decode_boxes",
    "detection_loss",
    "encode_boxes",
    "evaluate_classifier",
    "evaluate_detector",
    "flatten_levels",
    "focal_loss",
    "generate_anchors",
    "match_anchors",
    "postprocess",
    "run_trial",
]
