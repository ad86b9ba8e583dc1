"""timm and effdet, importable on a CPU-only torch: the reference implementations the
equivalence tests compare against (``tests/test_reference.py``).

The torchvision wheel that matches the CPU torch wheel is a CUDA build whose compiled operators
do not load beside it, and ``import torchvision`` (which timm and effdet do) fails on the missing
``torchvision::nms``. Registered here in pure torch (greedy NMS, exact, slow), before the import,
it lets timm and effdet import and run (torchvision is then told that its operators are there);
effdet's post-processing is the only user of the operator.
Tests only: scaling-lab itself never imports torchvision.
"""

from __future__ import annotations

import importlib.util

import torch

_LIBRARY = None


def _greedy_nms(boxes: torch.Tensor, scores: torch.Tensor, iou_threshold: float) -> torch.Tensor:
    """Indices of the kept boxes, best first: torchvision's ``nms`` contract."""
    order = scores.argsort(descending=True, stable=True)
    boxes = boxes[order]
    x1, y1, x2, y2 = boxes.unbind(1)
    areas = (x2 - x1) * (y2 - y1)
    suppressed = torch.zeros(len(order), dtype=torch.bool)
    keep = []
    for i in range(len(order)):
        if suppressed[i]:
            continue
        keep.append(i)
        width = (torch.minimum(x2[i], x2) - torch.maximum(x1[i], x1)).clamp(min=0)
        height = (torch.minimum(y2[i], y2) - torch.maximum(y1[i], y1)).clamp(min=0)
        intersection = width * height
        suppressed |= intersection / (areas[i] + areas - intersection) > iou_threshold
    return order[torch.tensor(keep, dtype=torch.long)]


def _register_torchvision_ops() -> None:
    global _LIBRARY
    if _LIBRARY is not None or hasattr(torch.ops.torchvision, "nms"):  # registered, or a working torchvision
        return
    library = torch.library.Library("torchvision", "DEF")
    library.define("nms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")
    library.define("qnms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")  # torchvision registers a fake for it
    library.impl("nms", _greedy_nms, "CPU")
    _LIBRARY = library


def _has_ops() -> bool:
    return True


def available() -> bool:
    return all(importlib.util.find_spec(name) is not None for name in ("torchvision", "timm", "effdet"))


def import_reference():
    """(timm, effdet), imported with the NMS operator registered."""
    _register_torchvision_ops()
    import torchvision.extension

    if not torchvision.extension._has_ops():  # its ops library did not load: ours stands in for nms
        torchvision.extension._has_ops = _has_ops
    import effdet
    import timm

    return timm, effdet
