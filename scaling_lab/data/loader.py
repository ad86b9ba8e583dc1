"""Seeded batch loaders: the order and augmentation conventions shared by detection and
classification, and the detection batch contract.

Train mode reshuffles every epoch and augments (flip, scale jitter, crop/pad); eval mode keeps
the dataset order and only resizes, pads and normalizes. Given the seed, epoch ``e`` of a loader
is always the same sequence of batches, on any device: the random numbers are drawn on the CPU
from a generator seeded with (seed, e), and iterating a loader advances its epoch.

Data-parallel workers split the same global order, as ``torch.utils.data.DistributedSampler``
does: with ``shard=(rank, workers)`` a loader's ``batch_size`` is the global batch and each batch
it yields holds images ``rank, rank + workers, ...`` of that global batch, augmented with the
global batch's random numbers, so N workers see and augment exactly the images one process does.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Iterator

import numpy as np
import torch

from scaling_lab.data.store import ImageStore, PixelBatch
from scaling_lab.data.transforms import (
    Augmentation,
    normalize_padded,
    sample_augmentation,
    visible_sizes,
    warp_boxes,
    warp_images,
)
from scaling_lab.errors import ScalingLabError
from scaling_lab.resolution import Resolution
from scaling_lab.trial import batch_split_problem

if TYPE_CHECKING:
    from scaling_lab.data.coco import CocoDetection

_ORDER_STREAM, _AUGMENTATION_STREAM = 0, 1


def seeded_generator(seed: int, epoch: int, stream: int) -> torch.Generator:
    """An independent CPU generator for one (seed, epoch, purpose)."""
    state = np.random.SeedSequence([seed, epoch, stream]).generate_state(1, dtype=np.uint64)[0]
    return torch.Generator().manual_seed(int(state))


class BatchLoader(ABC):
    """The common part of the loaders: validation, epoch order, batching and device transfer.

    Subclasses turn a batch of decoded images into their batch type in :meth:`_make_batch`.
    """

    def __init__(
        self,
        dataset,
        resolution: Resolution,
        batch_size: int,
        train: bool,
        seed: int = 0,
        device: torch.device | str = "cpu",
        scale_range: tuple[float, float] = (0.8, 1.2),
        flip_probability: float = 0.5,
        shard: tuple[int, int] = (0, 1),
    ) -> None:
        if not _is_resolution(resolution):
            raise ScalingLabError(f"loader resolution {resolution!r} must be a positive integer (e.g. 256) or (height, width) of them (e.g. (256, 448))")
        if not isinstance(batch_size, int) or batch_size < 1:
            raise ScalingLabError(f"loader batch_size {batch_size!r} must be a positive integer (e.g. 16)")
        low, high = scale_range
        if not 0 < low <= high:
            raise ScalingLabError(f"loader scale_range {scale_range!r} must be (low, high) with 0 < low <= high")
        if not 0 <= flip_probability <= 1:
            raise ScalingLabError(f"loader flip_probability {flip_probability!r} must be in [0, 1]")
        rank, workers = shard
        if not 0 <= rank < workers:
            raise ScalingLabError(f"loader shard {shard!r} must be (rank, workers) with 0 <= rank < workers")
        problem = batch_split_problem(batch_size, workers, len(dataset)) if train else None
        if problem:
            raise ScalingLabError(problem)
        try:
            self.device = torch.device(device)
        except (RuntimeError, TypeError):
            raise ScalingLabError(f"loader device {device!r} is not a torch device (e.g. 'cpu', 'cuda', 'cuda:0')") from None
        self.dataset = dataset
        self.resolution = resolution
        self.batch_size = batch_size
        self.train = train
        self.seed = seed
        self.scale_range = (float(low), float(high))
        self.flip_probability = flip_probability
        self.shard = shard
        self.epoch = 0

    def __len__(self) -> int:
        """Batches per epoch. Train mode drops the last partial batch, unless it is the only one."""
        if self.train and len(self.dataset) >= self.batch_size:
            return len(self.dataset) // self.batch_size
        return math.ceil(len(self.dataset) / self.batch_size)

    def set_epoch(self, epoch: int) -> None:
        """Make the next iteration epoch ``epoch`` (e.g. when resuming a run)."""
        self.epoch = epoch

    def __iter__(self) -> Iterator:
        epoch, self.epoch = self.epoch, self.epoch + 1
        if self.train:
            order = torch.randperm(len(self.dataset), generator=seeded_generator(self.seed, epoch, _ORDER_STREAM))
        else:
            order = torch.arange(len(self.dataset))
        index_batches = [order[start : start + self.batch_size] for start in range(0, len(order), self.batch_size)]
        index_batches = index_batches[: len(self)]
        rank, workers = self.shard
        rows = [torch.arange(len(indices))[rank::workers] for indices in index_batches]
        shares = [(indices[mine], mine, len(indices)) for indices, mine in zip(index_batches, rows) if len(mine)]
        augmentation_generator = seeded_generator(self.seed, epoch, _AUGMENTATION_STREAM)
        store: ImageStore = self.dataset.image_store
        for (indices, mine, drawn), pixel_batch in zip(shares, store.batches([share[0] for share in shares], self.resolution)):
            yield self._make_batch(indices, pixel_batch, _Draws(augmentation_generator, mine, drawn))

    def _to_device(self, tensor: torch.Tensor) -> torch.Tensor:
        if self.device.type == "cuda":
            return tensor.pin_memory().to(self.device, non_blocking=True)
        return tensor.to(self.device)

    def _images(self, pixel_batch: PixelBatch, draws: _Draws) -> tuple[torch.Tensor, torch.Tensor, Augmentation | None]:
        """Normalized (and in train mode warped) images on the device, the content sizes, and the
        augmentation applied (None in eval mode)."""
        pixels, sizes = self._to_device(pixel_batch.pixels), pixel_batch.sizes.to(self.device)
        images = normalize_padded(pixels, pixel_batch.sizes)
        if not self.train:
            return images, sizes, None
        augmentation = sample_augmentation(
            pixel_batch.sizes, self.resolution, draws.generator, self.scale_range, self.flip_probability, draws.rows, draws.drawn
        ).to(self.device)
        return warp_images(images, sizes, augmentation), sizes, augmentation

    @abstractmethod
    def _make_batch(self, indices: torch.Tensor, pixel_batch: PixelBatch, draws: _Draws):
        """The subclass's batch type for these dataset indices and decoded images."""


def _is_resolution(value: object) -> bool:
    """A positive int, or a (height, width) pair of them."""
    sides = value if isinstance(value, tuple) and len(value) == 2 else (value,)
    return all(isinstance(side, int) and not isinstance(side, bool) and side >= 1 for side in sides)


@dataclass
class _Draws:
    """Where a batch's augmentation comes from: the epoch's generator, drawn for a global batch of
    ``drawn`` images of which this batch holds ``rows``."""

    generator: torch.Generator
    rows: torch.Tensor
    drawn: int


@dataclass
class DetectionBatch:
    """One detection batch; B images, at most M boxes per image (M >= 1).

    ``boxes`` are xyxy in pixels of the H x W input (padding rows are zeros, label -1). Map
    predictions back to the original image with ``original = input / scales[i]``; ``sizes`` is
    the image area of the input (the rest is padding), where predictions are clipped. In train
    mode the scale includes the jitter but the flip and crop offset are not undone.
    """

    images: torch.Tensor  # float32 [B, 3, H, W], ImageNet-normalized, padding 0
    boxes: torch.Tensor  # float32 [B, M, 4]
    labels: torch.Tensor  # int64 [B, M], contiguous labels 0..K-1, -1 = padding
    image_ids: list[int]  # COCO image ids
    scales: torch.Tensor  # float32 [B]: input pixels per original pixel
    sizes: torch.Tensor  # float32 [B, 2]: (height, width) of the image area of the input

    def to(self, device: torch.device | str, non_blocking: bool = True) -> "DetectionBatch":
        return replace(
            self,
            images=self.images.to(device, non_blocking=non_blocking),
            boxes=self.boxes.to(device, non_blocking=non_blocking),
            labels=self.labels.to(device, non_blocking=non_blocking),
            scales=self.scales.to(device, non_blocking=non_blocking),
            sizes=self.sizes.to(device, non_blocking=non_blocking),
        )


class DetectionLoader(BatchLoader):
    """Iterates a :class:`~scaling_lab.data.coco.CocoDetection` as :class:`DetectionBatch` es on ``device``."""

    dataset: "CocoDetection"

    def _make_batch(self, indices: torch.Tensor, pixel_batch: PixelBatch, draws: _Draws) -> DetectionBatch:
        targets = [self.dataset.targets(int(index)) for index in indices]
        most = max(1, max(len(labels) for _, labels in targets))
        boxes = torch.zeros(len(targets), most, 4)
        labels = torch.full((len(targets), most), -1, dtype=torch.int64)
        for row, ((image_boxes, image_labels), scale) in enumerate(zip(targets, pixel_batch.scales.tolist())):
            boxes[row, : len(image_labels)] = torch.from_numpy(image_boxes) * scale
            labels[row, : len(image_labels)] = torch.from_numpy(image_labels)
        images, sizes, augmentation = self._images(pixel_batch, draws)
        boxes, labels, scales = self._to_device(boxes), self._to_device(labels), pixel_batch.scales.to(self.device)
        visible = sizes.float()
        if augmentation is not None:
            boxes, labels = warp_boxes(boxes, labels, sizes, self.resolution, augmentation)
            scales = scales * augmentation.scale
            visible = visible_sizes(sizes, self.resolution, augmentation)
        return DetectionBatch(
            images=images,
            boxes=boxes,
            labels=labels,
            image_ids=[self.dataset.image_ids[int(index)] for index in indices],
            scales=scales,
            sizes=visible,
        )
