"""Decoded, resized images of a dataset, kept in memory when they fit a byte budget.

Decoding is the slow part of loading, so a small dataset is decoded once per resolution (in a
thread pool: PIL releases the GIL while decoding and resizing) and batches are then plain
tensor gathers. A dataset too big for the budget is decoded batch by batch, a few batches ahead
of the one being used.
"""

from __future__ import annotations

import math
import os
from collections import OrderedDict, deque
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Sequence

import torch

from scaling_lab.data.transforms import load_image_resized
from scaling_lab.resolution import Resolution, image_size

DEFAULT_MEMORY_BUDGET_BYTES = 2 * 1024**3
PREFETCH_BATCHES = 4


@dataclass
class PixelBatch:
    """Images placed top-left on H x W canvases, before normalization."""

    pixels: torch.Tensor  # uint8 [B, 3, H, W]
    sizes: torch.Tensor  # int64 [B, 2]: (height, width) of the image on the canvas
    scales: torch.Tensor  # float32 [B]: canvas pixels per original pixel


def available_cores() -> int:
    """The CPU cores this process may run on."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


class ImageStore:
    """The images of a dataset at any resolution, as :class:`PixelBatch` es of chosen indices."""

    def __init__(
        self,
        paths: Sequence[Path],
        expected_sizes: Sequence[tuple[int, int]] | None = None,
        memory_budget_bytes: int = DEFAULT_MEMORY_BUDGET_BYTES,
    ) -> None:
        self.paths = list(paths)
        self.expected_sizes = list(expected_sizes) if expected_sizes is not None else None
        self.memory_budget_bytes = memory_budget_bytes
        self._in_memory: OrderedDict[Resolution, PixelBatch] = OrderedDict()  # resolution -> all images

    def __len__(self) -> int:
        return len(self.paths)

    def fits_in_memory(self, resolution: Resolution) -> bool:
        return len(self.paths) * 3 * math.prod(image_size(resolution)) <= self.memory_budget_bytes

    def batches(self, index_batches: Sequence[torch.Tensor], resolution: Resolution) -> Iterator[PixelBatch]:
        """The pixel batches for each tensor of dataset indices, in order."""
        if self.fits_in_memory(resolution):
            everything = self._all_in_memory(resolution)
            for indices in index_batches:
                yield PixelBatch(everything.pixels[indices], everything.sizes[indices], everything.scales[indices])
            return
        with ThreadPoolExecutor(available_cores()) as pool:
            pending: deque[list[Future]] = deque()
            upcoming = iter(index_batches)
            while True:
                while len(pending) < PREFETCH_BATCHES and (indices := next(upcoming, None)) is not None:
                    pending.append([pool.submit(self._decode, int(index), resolution) for index in indices])
                if not pending:
                    return
                yield self._assemble([future.result() for future in pending.popleft()], resolution)

    def _all_in_memory(self, resolution: Resolution) -> PixelBatch:
        if resolution in self._in_memory:
            self._in_memory.move_to_end(resolution)
            return self._in_memory[resolution]
        needed = len(self.paths) * 3 * math.prod(image_size(resolution))
        while self._in_memory and sum(b.pixels.numel() for b in self._in_memory.values()) + needed > self.memory_budget_bytes:
            self._in_memory.popitem(last=False)
        with ThreadPoolExecutor(available_cores()) as pool:
            decoded = list(pool.map(lambda index: self._decode(index, resolution), range(len(self.paths))))
        self._in_memory[resolution] = self._assemble(decoded, resolution)
        return self._in_memory[resolution]

    def _decode(self, index: int, resolution: Resolution) -> tuple[torch.Tensor, float]:
        expected = self.expected_sizes[index] if self.expected_sizes is not None else None
        array, scale = load_image_resized(self.paths[index], resolution, expected)
        return torch.from_numpy(array).permute(2, 0, 1), scale

    @staticmethod
    def _assemble(decoded: list[tuple[torch.Tensor, float]], resolution: Resolution) -> PixelBatch:
        pixels = torch.zeros(len(decoded), 3, *image_size(resolution), dtype=torch.uint8)
        for canvas, (image, _) in zip(pixels, decoded):
            canvas[:, : image.shape[1], : image.shape[2]] = image
        sizes = torch.tensor([image.shape[1:] for image, _ in decoded], dtype=torch.int64).view(-1, 2)
        scales = torch.tensor([scale for _, scale in decoded], dtype=torch.float32)
        return PixelBatch(pixels, sizes, scales)
