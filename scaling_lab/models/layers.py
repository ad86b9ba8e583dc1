"""Small building blocks shared by the backbone, the feature network and the heads."""

from __future__ import annotations

import torch
from torch import nn

# The official code's batch norm: epsilon 1e-3, TF momentum 0.99 (PyTorch's 0.01).
BN_EPS = 1e-3
BN_MOMENTUM = 0.01

_ACTIVATIONS = {"swish": nn.SiLU, "relu": nn.ReLU, "relu6": nn.ReLU6, "hard_swish": nn.Hardswish, "gelu": nn.GELU}


def activation(name: str) -> nn.Module:
    return _ACTIVATIONS[name]()


def batch_norm(channels: int) -> nn.BatchNorm2d:
    return nn.BatchNorm2d(channels, eps=BN_EPS, momentum=BN_MOMENTUM)


def conv(in_channels: int, out_channels: int, kernel: int = 1, stride: int = 1, groups: int = 1, bias: bool = False) -> nn.Conv2d:
    """A 'same'-padded convolution (odd kernels: output = ceil(input / stride), as in TF)."""
    return nn.Conv2d(in_channels, out_channels, kernel, stride, padding=kernel // 2, groups=groups, bias=bias)


class ConvBN(nn.Sequential):
    """Conv (no bias) -> BN -> optional activation."""

    def __init__(self, in_channels: int, out_channels: int, kernel: int = 1, stride: int = 1, groups: int = 1, act: str | None = None):
        layers = [conv(in_channels, out_channels, kernel, stride, groups), batch_norm(out_channels)]
        if act is not None:
            layers.append(activation(act))
        super().__init__(*layers)


def head_conv(in_channels: int, out_channels: int, separable: bool) -> nn.Module:
    """A 3×3 conv with bias, depthwise-separable (depthwise without bias, pointwise with) or not."""
    if not separable:
        return conv(in_channels, out_channels, 3, bias=True)
    return nn.Sequential(
        conv(in_channels, in_channels, 3, groups=in_channels),
        conv(in_channels, out_channels, 1, bias=True),
    )


def drop_connect(x: torch.Tensor, drop_rate: float, training: bool) -> torch.Tensor:
    """Stochastic depth on a residual branch: drop whole samples, rescale the survivors."""
    if not training or drop_rate == 0.0:
        return x
    keep = 1.0 - drop_rate
    mask = torch.empty((x.shape[0],) + (1,) * (x.ndim - 1), dtype=x.dtype, device=x.device).bernoulli_(keep)
    return x * mask / keep
