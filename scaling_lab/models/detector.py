"""EfficientDet built from a ``DetectorSpec``: backbone -> extra levels -> feature network ->
class and box heads shared across levels."""

from __future__ import annotations

import math

import torch
from torch import nn

from scaling_lab.models.backbone import EfficientNet
from scaling_lab.models.feature_network import FeatureNetwork, FusionStyle, Resample
from scaling_lab.graphs import feature_graph
from scaling_lab.models.layers import activation, batch_norm, head_conv, max_pool
from scaling_lab.spec import DetectorSpec

CLASS_PRIOR = 0.01


class ExtraLevels(nn.Module):
    """Levels above the backbone's last one: P6 from the last backbone feature (1×1 conv + BN
    where channels differ, then max-pool 3, stride 2), each higher level a max-pool of the one below."""

    def __init__(self, in_channels: int, channels: int, count: int, padding: str):
        super().__init__()
        self.first = Resample(in_channels, channels, 1, padding)
        self.count = count
        self.padding = padding

    def forward(self, last: torch.Tensor) -> list[torch.Tensor]:
        levels = [self.first(last, ())]
        for _ in range(self.count - 1):
            levels.append(max_pool(levels[-1], 3, 2, self.padding))
        return levels


class Head(nn.Module):
    """``repeats`` × (3×3 conv -> per-level BN -> activation), then a predictor conv; the convs
    are shared across levels, the batch norms are not."""

    def __init__(self, channels: int, outputs: int, repeats: int, num_levels: int, separable: bool, act: str):
        super().__init__()
        self.convs = nn.ModuleList(head_conv(channels, channels, separable) for _ in range(repeats))
        self.bns = nn.ModuleList(nn.ModuleList(batch_norm(channels) for _ in range(repeats)) for _ in range(num_levels))
        self.act = activation(act)
        self.predict = head_conv(channels, outputs, separable)

    def forward(self, features: list[torch.Tensor]) -> list[torch.Tensor]:
        outputs = []
        for x, bns in zip(features, self.bns):
            for conv, bn in zip(self.convs, bns):
                x = self.act(bn(conv(x)))
            outputs.append(self.predict(x))
        return outputs


class EfficientDet(nn.Module):
    """``forward(images)`` returns ``(class_logits, box_deltas)``: per level, tensors of shape
    [B, anchors·classes, H, W] and [B, anchors·4, H, W], anchors ordered as in ``train.anchors``."""

    def __init__(self, spec: DetectorSpec):
        super().__init__()
        self.spec = spec
        self.backbone = EfficientNet(spec.backbone, classifier=False)
        top = max(spec.backbone.feature_levels)
        self.backbone_levels = list(range(spec.min_level, min(spec.max_level, top) + 1))
        in_channels = [self.backbone.level_channels(level) for level in self.backbone_levels]
        extra = spec.max_level - self.backbone_levels[-1]
        self.extra_levels = ExtraLevels(in_channels[-1], spec.channels, extra, spec.padding) if extra > 0 else None
        in_channels += [spec.channels] * extra
        graph = feature_graph(spec.feature_network, spec.min_level, spec.max_level)
        self.feature_network = FeatureNetwork(graph, in_channels, spec.feature_repeats, FusionStyle.from_spec(spec))
        head = dict(repeats=spec.head_repeats, num_levels=spec.num_levels, separable=spec.separable, act=spec.activation)
        self.class_head = Head(spec.channels, spec.num_anchors * spec.num_classes, **head)
        self.box_head = Head(spec.channels, spec.num_anchors * 4, **head)
        nn.init.constant_(self._predict_bias(self.class_head), -math.log((1 - CLASS_PRIOR) / CLASS_PRIOR))

    @staticmethod
    def _predict_bias(head: Head) -> torch.Tensor:
        predict = head.predict
        return (predict[-1] if isinstance(predict, nn.Sequential) else predict).bias

    def forward(self, images: torch.Tensor) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        features = self.backbone.forward_levels(images, self.backbone_levels)
        if self.extra_levels is not None:
            features += self.extra_levels(features[-1])
        features = self.feature_network(features)
        return self.class_head(features), self.box_head(features)
