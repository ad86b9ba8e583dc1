"""EfficientNet built from a ``BackboneSpec``: stem, MBConv stages, head and classifier."""

from __future__ import annotations

import torch
from torch import nn

from scaling_lab.models.layers import ConvBN, activation, conv, drop_connect
from scaling_lab.scaling import round_channels, round_repeats
from scaling_lab.spec import BackboneSpec


class SqueezeExcite(nn.Module):
    """Channel attention; the bottleneck is sized from the block's *input* channels."""

    def __init__(self, channels: int, reduced: int, act: str):
        super().__init__()
        self.reduce = conv(channels, reduced, bias=True)
        self.act = activation(act)
        self.expand = conv(reduced, channels, bias=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        scale = x.mean((2, 3), keepdim=True)
        return x * torch.sigmoid(self.expand(self.act(self.reduce(scale))))


class MBConv(nn.Module):
    """Inverted residual: 1×1 expand -> k×k depthwise -> squeeze-excite -> 1×1 project."""

    def __init__(
        self, in_channels: int, out_channels: int, kernel: int, stride: int, expand: int, se_ratio: float, act: str, drop_rate: float, padding: str
    ):
        super().__init__()
        mid = in_channels * expand
        self.expand = ConvBN(in_channels, mid, act=act) if expand != 1 else nn.Identity()
        self.depthwise = ConvBN(mid, mid, kernel, stride, groups=mid, act=act, padding=padding)
        self.se = SqueezeExcite(mid, max(1, int(in_channels * se_ratio)), act) if se_ratio > 0 else nn.Identity()
        self.project = ConvBN(mid, out_channels)
        self.residual = stride == 1 and in_channels == out_channels
        self.drop_rate = drop_rate

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.project(self.se(self.depthwise(self.expand(x))))
        if self.residual:
            out = drop_connect(out, self.drop_rate, self.training) + x
        return out


class EfficientNet(nn.Module):
    """The backbone; ``forward_levels`` returns the last feature map at each stride 2^level.

    With ``classifier=False`` (inside a detector) the 1×1 head conv and the classifier are not
    built, as in the official EfficientDet.
    """

    def __init__(self, spec: BackboneSpec, classifier: bool = True):
        super().__init__()
        act = spec.activation
        stem = round_channels(spec.stem_channels, spec.width)
        self.stem = ConvBN(3, stem, 3, 2, act=act, padding=spec.padding)
        stages = spec.parsed_stages
        repeats = [round_repeats(stage.repeats, spec.depth) for stage in stages]
        total_blocks, block_index = sum(repeats), 0
        in_channels = stem
        self.stages = nn.ModuleList()
        self.stage_channels: list[int] = []
        for stage, count in zip(stages, repeats):
            out_channels = round_channels(stage.channels, spec.width)
            blocks = []
            for i in range(count):
                drop_rate = spec.drop_connect * block_index / total_blocks
                blocks.append(
                    MBConv(
                        in_channels, out_channels, stage.kernel, stage.stride if i == 0 else 1, stage.expand, spec.se_ratio, act, drop_rate, spec.padding
                    )
                )
                in_channels, block_index = out_channels, block_index + 1
            self.stages.append(nn.Sequential(*blocks))
            self.stage_channels.append(out_channels)
        self.level_stage = spec.feature_levels
        self.classifier = classifier
        if classifier:
            head = round_channels(spec.head_channels, spec.width)
            self.head = ConvBN(in_channels, head, act=act)
            self.dropout = nn.Dropout(spec.dropout)
            self.fc = nn.Linear(head, spec.num_classes)

    def level_channels(self, level: int) -> int:
        return self.stage_channels[self.level_stage[level]]

    def forward_levels(self, x: torch.Tensor, levels: list[int]) -> list[torch.Tensor]:
        """Feature maps at the requested pyramid levels (stride 2^level)."""
        wanted = {self.level_stage[level]: level for level in levels}
        features: dict[int, torch.Tensor] = {}
        x = self.stem(x)
        last = max(wanted)
        for index, stage in enumerate(self.stages[: last + 1]):
            x = stage(x)
            if index in wanted:
                features[wanted[index]] = x
        return [features[level] for level in levels]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        for stage in self.stages:
            x = stage(x)
        x = self.head(x).mean((2, 3))
        return self.fc(self.dropout(x))
