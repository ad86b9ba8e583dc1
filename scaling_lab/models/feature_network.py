"""One module for every feature network: a ``FeatureGraph`` (see ``graphs``) stacked
``feature_repeats`` times, each node a ``FusionNode`` built in one ``FusionStyle``."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from scaling_lab.errors import SpecError
from scaling_lab.graphs import FeatureGraph, Node
from scaling_lab.models.layers import activation, batch_norm, conv, head_conv, max_pool
from scaling_lab.resolution import Resolution, image_size
from scaling_lab.spec import FUSIONS, DetectorSpec

FUSION_EPSILON = 1e-4


class Resample(nn.Module):
    """Brings one input to a node's level: 1×1 conv + BN where channels differ, then
    nearest upsampling or max-pooling (kernel stride+1, as the official code)."""

    def __init__(self, in_channels: int, out_channels: int, level_shift: int, padding: str = "symmetric"):
        super().__init__()
        self.project = (
            nn.Sequential(conv(in_channels, out_channels, bias=True), batch_norm(out_channels))
            if in_channels != out_channels
            else nn.Identity()
        )
        self.level_shift = level_shift  # > 0: downsample by 2^shift; < 0: upsample
        self.padding = padding

    def forward(self, x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
        x = self.project(x)
        if self.level_shift > 0:
            stride = 2**self.level_shift
            return max_pool(x, stride + 1, stride, self.padding)
        if self.level_shift < 0:
            return F.interpolate(x, size=size, mode="nearest")
        return x


@dataclass(frozen=True)
class FusionStyle:
    """How every node of a feature network is built: its channels, the spec's fusion rule and
    weights, separable convolutions, activation, padding and the input resolution (per-pixel
    weights are maps of the node's level at that resolution) (``from_spec``)."""

    channels: int
    fusion: str
    fusion_weights: str
    separable: bool
    act: str
    padding: str = "symmetric"
    resolution: Resolution | None = None

    @classmethod
    def from_spec(cls, spec: DetectorSpec) -> "FusionStyle":
        return cls(spec.channels, spec.fusion, spec.fusion_weights, spec.separable, spec.activation, spec.padding, spec.resolution)

    def weight_shape(self, inputs: int, level: int | None) -> tuple[int, ...]:
        """One weight per input (``scalar``), per input and channel (``channel``), or per input
        and pixel of the node's level (``pixel``: a map, shared by the channels)."""
        if self.fusion_weights == "channel":
            return (inputs, self.channels)
        if self.fusion_weights == "pixel":
            if self.resolution is None or level is None:
                raise SpecError("fusion_weights 'pixel' needs the resolution and the node's level to size its weight maps")
            height, width = image_size(self.resolution)
            return (inputs, height // 2**level, width // 2**level)
        return (inputs,)


class GlobalPoolAttention(nn.Module):
    """NAS-FPN's global-pooling operation (Ghiasi et al. 2019) on two inputs at the node's level:
    the second input's global average, through a sigmoid, gates the first, and the second is
    added: ``a · sigmoid(mean(b)) + b``."""

    def __init__(self, inputs: int, channels: int):
        super().__init__()
        if inputs != 2:
            raise SpecError(f"node op 'global_pool_attention' takes 2 inputs, not {inputs}")

    def forward(self, resampled: list[torch.Tensor]) -> torch.Tensor:
        first, second = resampled
        return first * torch.sigmoid(second.mean(dim=(2, 3), keepdim=True)) + second


# Operations a graph node may name (``graphs.Node.op``): name -> module of (input count, channels).
NODE_OPS: dict[str, type[nn.Module]] = {"global_pool_attention": GlobalPoolAttention}


class FusionNode(nn.Module):
    """Resamples its inputs to its level, combines them, then activation -> (separable) 3×3
    conv -> BN. Combining is the node's own ``op`` where its graph node names one, else its
    fusion rule (the node's, else the style's); weights start at 1, one per input, per input and
    channel or per input and pixel (``FusionStyle.weight_shape``), normalized across the inputs:
    ``sum`` plain sum; ``weighted`` unbounded Σ w_i·I_i; ``softmax``
    Σ softmax(w)_i·I_i; ``fast`` Σ relu(w_i)/(ε + Σ_j relu(w_j))·I_i.
    """

    def __init__(self, in_channels: list[int], level_shifts: list[int], style: FusionStyle, node: Node | None = None):
        super().__init__()
        channels = style.channels
        self.resample = nn.ModuleList(Resample(c, channels, shift, style.padding) for c, shift in zip(in_channels, level_shifts))
        self.op, self.fusion = None, None
        if node is not None and node.op is not None:
            if node.op not in NODE_OPS:
                raise SpecError(f"node op {node.op!r} is not valid; valid ops are {', '.join(NODE_OPS)}")
            self.op = NODE_OPS[node.op](len(in_channels), channels)
        else:
            self.fusion = node.fusion if node is not None and node.fusion is not None else style.fusion
            if self.fusion not in FUSIONS:
                raise SpecError(f"node fusion {self.fusion!r} is not valid; valid values are {', '.join(FUSIONS)}")
            if self.fusion != "sum":
                self.weights = nn.Parameter(torch.ones(style.weight_shape(len(in_channels), node.level if node is not None else None)))
        self.act = activation(style.act)
        self.conv = head_conv(channels, channels, style.separable)
        self.bn = batch_norm(channels)

    def normalized_weights(self) -> torch.Tensor:
        if self.fusion == "softmax":
            return torch.softmax(self.weights, dim=0)
        if self.fusion == "fast":
            weights = torch.relu(self.weights)
            return weights / (weights.sum(dim=0) + FUSION_EPSILON)
        return self.weights

    def combine(self, resampled: list[torch.Tensor]) -> torch.Tensor:
        if self.op is not None:
            return self.op(resampled)
        if self.fusion == "sum":
            fused = resampled[0]
            for x in resampled[1:]:
                fused = fused + x
            return fused
        weights = self.normalized_weights()
        if weights.ndim == 2:  # per channel
            weights = weights[:, :, None, None]
        elif weights.ndim == 3:  # per pixel
            weights = weights[:, None]
        fused = weights[0] * resampled[0]
        for weight, x in zip(weights[1:], resampled[1:]):
            fused = fused + weight * x
        return fused

    def forward(self, inputs: list[torch.Tensor], size: tuple[int, int]) -> torch.Tensor:
        fused = self.combine([resample(x, size) for resample, x in zip(self.resample, inputs)])
        return self.bn(self.conv(self.act(fused)))


class FeatureCell(nn.Module):
    """One repeat of a feature graph."""

    def __init__(self, graph: FeatureGraph, in_channels: list[int], style: FusionStyle):
        super().__init__()
        self.graph = graph
        node_levels = list(graph.levels) + [node.level for node in graph.nodes]
        node_channels = list(in_channels) + [style.channels] * len(graph.nodes)
        self.nodes = nn.ModuleList(
            FusionNode([node_channels[i] for i in node.inputs], [node.level - node_levels[i] for i in node.inputs], style, node)
            for node in graph.nodes
        )
        self.output_ids = [graph.output_ids[level] for level in graph.levels]
        # An input that passes through untouched (e.g. the top level of an FPN) still has to
        # leave the cell with ``channels``.
        self.project_outputs = nn.ModuleList(Resample(node_channels[i], style.channels, 0) for i in self.output_ids)

    def forward(self, features: list[torch.Tensor]) -> list[torch.Tensor]:
        sizes = {level: tuple(x.shape[-2:]) for level, x in zip(self.graph.levels, features)}
        outputs = list(features)
        for node, module in zip(self.graph.nodes, self.nodes):
            outputs.append(module([outputs[i] for i in node.inputs], sizes[node.level]))
        return [project(outputs[i], ()) for project, i in zip(self.project_outputs, self.output_ids)]


class FeatureNetwork(nn.Module):
    """``repeats`` cells; the first one also projects backbone channels to ``channels``."""

    def __init__(self, graph: FeatureGraph, in_channels: list[int], repeats: int, style: FusionStyle):
        super().__init__()
        self.cells = nn.ModuleList(
            FeatureCell(graph, in_channels if i == 0 else [style.channels] * len(in_channels), style) for i in range(repeats)
        )

    def forward(self, features: list[torch.Tensor]) -> list[torch.Tensor]:
        for cell in self.cells:
            features = cell(features)
        return features
