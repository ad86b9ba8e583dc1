"""The numerics a trial runs in on its device: bf16 autocast and channels_last memory layout.

One rule, used wherever a model is trained, validated or timed (the trainer, ``evaluate_spec``,
the study's latency timing, the speed benchmark): on CUDA, ``task.bf16`` and
``task.channels_last``; on the CPU, float32 (bf16 with ``task.bf16_cpu``) and the default layout.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from scaling_lab.trial import Task


@dataclass(frozen=True)
class Precision:
    device: torch.device
    amp_dtype: torch.dtype | None  # bf16 autocast, or None for float32
    channels_last: bool

    @property
    def dtype_name(self) -> str:
        """As ``latency.measure_latency`` names it."""
        return "bfloat16" if self.amp_dtype is not None else "float32"

    def autocast(self) -> torch.autocast:
        return torch.autocast(self.device.type, dtype=self.amp_dtype, enabled=self.amp_dtype is not None)

    def images(self, images: torch.Tensor) -> torch.Tensor:
        """A batch of images in the model's memory layout."""
        return images.contiguous(memory_format=torch.channels_last) if self.channels_last else images

    def place(self, model: nn.Module) -> nn.Module:
        """The model on the device, in the memory layout."""
        return model.to(self.device, memory_format=torch.channels_last if self.channels_last else torch.preserve_format)


def precision_for(task: Task, device: torch.device) -> Precision:
    """The trial's precision on ``device`` (see the module's rule)."""
    on_cuda = device.type == "cuda"
    bf16 = task.bf16 if on_cuda else task.bf16_cpu
    return Precision(device, torch.bfloat16 if bf16 else None, on_cuda and task.channels_last)
