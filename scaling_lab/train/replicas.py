"""The processes that train one trial together: one process, or a ``torch.distributed`` group of
data-parallel workers (one model replica each, the global batch split among them).

Everything a trial does across workers goes through ``Replicas``: summing losses and counts,
gathering validation records, handing rank 0's decisions to every rank, wrapping the model for
gradient averaging and synchronizing batch norm. With one process each of these is the identity,
so a one-process trial computes exactly what it computed before workers existed.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TypeVar

import torch
import torch.distributed as dist
from torch import nn

T = TypeVar("T")


@dataclass(frozen=True)
class Replicas:
    rank: int = 0
    count: int = 1

    @classmethod
    def of_process_group(cls) -> Replicas:
        """This process's place in the initialized default process group."""
        return cls(dist.get_rank(), dist.get_world_size())

    @property
    def is_main(self) -> bool:
        """Rank 0 writes checkpoints, reports and shows progress."""
        return self.rank == 0

    def sum(self, tensor: torch.Tensor) -> torch.Tensor:
        """The sum over workers (a new tensor; gradients do not flow through it)."""
        if self.count == 1:
            return tensor
        total = tensor.detach().clone()
        dist.all_reduce(total)
        return total

    def gather(self, items: list[T]) -> list[T]:
        """Every worker's items, rank after rank (a validation's records)."""
        if self.count == 1:
            return items
        gathered: list[list[T] | None] = [None] * self.count
        dist.all_gather_object(gathered, items)
        return [item for part in gathered for item in part or []]

    def broadcast(self, value: T) -> T:
        """Rank 0's ``value`` on every rank (decisions: validation metrics, stop or go)."""
        if self.count == 1:
            return value
        holder = [value]
        dist.broadcast_object_list(holder, src=0)
        return holder[0]

    def prepare(self, model: nn.Module) -> nn.Module:
        """The model with its batch norms synchronized across workers (normalized over the global
        batch, as one process normalizes it); the same model with one process."""
        if self.count == 1:
            return model
        if next(model.parameters()).device.type == "cuda":
            return nn.SyncBatchNorm.convert_sync_batchnorm(model)
        return _convert_to_cross_worker(model)

    def wrap(self, model: nn.Module) -> nn.Module:
        """What the training step calls: the model, or with workers its gradient-averaging
        ``DistributedDataParallel`` wrapper (checkpoints keep the bare model's keys)."""
        if self.count == 1:
            return model
        device_ids = [model_device.index] if (model_device := next(model.parameters()).device).type == "cuda" else None
        # Batch norms are synchronized, so their buffers agree without broadcasting them.
        return nn.parallel.DistributedDataParallel(model, device_ids=device_ids, forward_sync_buffers=False)


ONE_PROCESS = Replicas()


class CrossWorkerBatchNorm(nn.BatchNorm2d):
    """Batch norm over the global batch of all workers, for the CPU (gloo), where torch's
    ``SyncBatchNorm`` refuses to run. In training it sums each channel's count, sum and sum of
    squares over workers (differentiably, so gradients also flow across workers, as in
    ``SyncBatchNorm``); in eval mode it is a plain batch norm on its running statistics."""

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        if not self.training:
            return super().forward(input)
        values = input.float()
        count = torch.tensor([values.numel() / values.shape[1]], dtype=torch.float32, device=values.device)
        sums = torch.cat([values.sum(dim=(0, 2, 3)), (values * values).sum(dim=(0, 2, 3)), count])
        sums = _SumOverWorkers.apply(sums)
        channels = values.shape[1]
        total = sums[-1]
        mean = sums[:channels] / total
        variance = (sums[channels : 2 * channels] / total - mean * mean).clamp(min=0)
        if self.track_running_stats:
            with torch.no_grad():
                self.num_batches_tracked.add_(1)
                unbiased = variance * total / (total - 1).clamp(min=1)
                momentum = self.momentum if self.momentum is not None else 1.0 / float(self.num_batches_tracked)
                self.running_mean.lerp_(mean.detach(), momentum)
                self.running_var.lerp_(unbiased.detach(), momentum)
        normalized = (values - mean.view(1, -1, 1, 1)) * torch.rsqrt(variance.view(1, -1, 1, 1) + self.eps)
        if self.affine:
            normalized = normalized * self.weight.view(1, -1, 1, 1) + self.bias.view(1, -1, 1, 1)
        return normalized.to(input.dtype)


class _SumOverWorkers(torch.autograd.Function):
    """All-reduce (sum) whose gradient is the sum of every worker's gradient of its output."""

    @staticmethod
    def forward(context, tensor: torch.Tensor) -> torch.Tensor:
        total = tensor.clone()
        dist.all_reduce(total)
        return total

    @staticmethod
    def backward(context, gradient: torch.Tensor) -> torch.Tensor:
        total = gradient.clone()
        dist.all_reduce(total)
        return total


def _convert_to_cross_worker(module: nn.Module) -> nn.Module:
    """``module`` with every ``BatchNorm2d`` replaced by a ``CrossWorkerBatchNorm`` holding the same
    parameters and statistics (the state-dict keys stay the same)."""
    if isinstance(module, nn.BatchNorm2d) and not isinstance(module, CrossWorkerBatchNorm):
        converted = CrossWorkerBatchNorm(module.num_features, module.eps, module.momentum, module.affine, module.track_running_stats)
        converted.load_state_dict(module.state_dict())
        converted.to(next(iter(module.state_dict().values())).device)
        if module.affine:
            converted.weight.requires_grad_(module.weight.requires_grad)
            converted.bias.requires_grad_(module.bias.requires_grad)
        converted.train(module.training)
        return converted
    for name, child in module.named_children():
        module.add_module(name, _convert_to_cross_worker(child))
    return module
