"""Small building blocks shared by the backbone, the feature network and the heads."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

# The official code's batch norm: epsilon 1e-3, TF momentum 0.99 (PyTorch's 0.01).
BN_EPS = 1e-3
BN_MOMENTUM = 0.01

_ACTIVATIONS = {"swish": nn.SiLU, "relu": nn.ReLU, "relu6": nn.ReLU6, "hard_swish": nn.Hardswish, "gelu": nn.GELU}


def activation(name: str) -> nn.Module:
    return _ACTIVATIONS[name]()


def batch_norm(channels: int) -> nn.BatchNorm2d:
    return nn.BatchNorm2d(channels, eps=BN_EPS, momentum=BN_MOMENTUM)


PADDINGS = ("same", "symmetric")


def same_padding(size: int, kernel: int, stride: int) -> tuple[int, int]:
    """TensorFlow's 'SAME' padding of one dimension: output ceil(size / stride), the total padding
    split with the odd pixel after (so stride 2 on an even size pads only the end)."""
    total = max((math.ceil(size / stride) - 1) * stride + kernel - size, 0)
    return total // 2, total - total // 2


def _pad_same(x: torch.Tensor, kernel: int, stride: int, value: float = 0.0) -> torch.Tensor:
    top, bottom = same_padding(x.shape[-2], kernel, stride)
    left, right = same_padding(x.shape[-1], kernel, stride)
    if top == bottom == left == right == 0:
        return x
    return F.pad(x, (left, right, top, bottom), value=value)


class SameConv2d(nn.Conv2d):
    """A convolution with TF 'SAME' padding computed from the input size (unpadded ``nn.Conv2d``
    otherwise, so its weights and keys are a plain convolution's)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(_pad_same(x, self.kernel_size[0], self.stride[0]))


def conv(
    in_channels: int, out_channels: int, kernel: int = 1, stride: int = 1, groups: int = 1, bias: bool = False, padding: str = "symmetric"
) -> nn.Conv2d:
    """A convolution with output ceil(input / stride) (odd kernels). ``symmetric`` pads kernel // 2
    on every side; ``same`` is TF's SAME padding, which differs only for a stride above 1 (it pads
    the end only where the input is even), as the official EfficientNet/EfficientDet weights
    were trained."""
    if padding == "same" and stride > 1:
        return SameConv2d(in_channels, out_channels, kernel, stride, padding=0, groups=groups, bias=bias)
    return nn.Conv2d(in_channels, out_channels, kernel, stride, padding=kernel // 2, groups=groups, bias=bias)


def max_pool(x: torch.Tensor, kernel: int, stride: int, padding: str = "symmetric") -> torch.Tensor:
    """Max-pooling with output ceil(input / stride), padded as ``conv`` pads (with -inf)."""
    if padding == "same":
        return F.max_pool2d(_pad_same(x, kernel, stride, -math.inf), kernel, stride)
    return F.max_pool2d(x, kernel, stride, padding=kernel // 2)


class ConvBN(nn.Sequential):
    """Conv (no bias) -> BN -> optional activation."""

    def __init__(
        self, in_channels: int, out_channels: int, kernel: int = 1, stride: int = 1, groups: int = 1, act: str | None = None, padding: str = "symmetric"
    ):
        layers = [conv(in_channels, out_channels, kernel, stride, groups, padding=padding), batch_norm(out_channels)]
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
