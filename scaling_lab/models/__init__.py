"""Models built from specs: ``build_model(spec)`` is the only entry point the rest needs."""

from __future__ import annotations

from torch import nn

from scaling_lab.models.backbone import EfficientNet
from scaling_lab.models.detector import EfficientDet
from scaling_lab.spec import BackboneSpec, DetectorSpec, Spec


def build_model(spec: Spec) -> nn.Module:
    """An EfficientNet classifier for a ``BackboneSpec``, an EfficientDet for a ``DetectorSpec``."""
    if isinstance(spec, DetectorSpec):
        return EfficientDet(spec)
    if isinstance(spec, BackboneSpec):
        return EfficientNet(spec)
    raise TypeError(f"not a spec: {spec!r}")


__all__ = ["build_model", "EfficientDet", "EfficientNet"]
