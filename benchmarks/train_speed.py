"""Training throughput: the full trial step against the bare model step.

The full step is what ``run_trial`` does per batch (it is the trainer's ``Training.step``): take
the next batch from the loader (images decoded once and kept in memory, augmented on the
device), label the anchors, compute the loss, backward, clip, step the optimizer and the
schedule. The bare step is the same step on a random tensor already on the device, with a
trivial loss. Their ratio is the overhead of
data, labeling and the loss. ``benchmarks/compare_effdet.py`` times the same two steps beside
effdet's.

    python benchmarks/train_speed.py                                   # D0, 512, batch 32, GPU
    python benchmarks/train_speed.py --resolution 256 --batch-size 4 --steps 5   # CPU-sized
"""

from __future__ import annotations

import argparse
import time
from dataclasses import dataclass, replace
from typing import Callable

import torch
from torch import nn

from scaling_lab.data import DetectionLoader, synthetic_dataset
from scaling_lab.spec_files import load_spec
from scaling_lab.train.precision import Precision, precision_for
from scaling_lab.train.trainer import start_training
from scaling_lab.trial import Task

BENCHMARK_IMAGES = 32


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--spec", default="efficientdet-d0", help="preset or spec file (default: efficientdet-d0)")
    parser.add_argument("--resolution", type=int, default=512)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--steps", type=int, default=20, help="timed steps of each kind")
    parser.add_argument("--warmup", type=int, default=3, help="untimed steps first (more with --compile)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--fp32", action="store_true", help="no bf16 autocast (the default on GPU)")
    parser.add_argument("--compile", action="store_true", help="torch.compile the model")
    return parser.parse_args()


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def images_per_second(step, steps: int, warmup: int, batch_size: int, device: torch.device) -> float:
    for _ in range(warmup):
        step()
    synchronize(device)
    started = time.perf_counter()
    for _ in range(steps):
        step()
    synchronize(device)
    return steps * batch_size / (time.perf_counter() - started)


def synthetic_loader(resolution: int, batch_size: int, device: torch.device) -> Callable[[], object]:
    """The next training batch of a small synthetic set (at least 32 images, one generation per
    resolution), epoch after epoch; each epoch is reshuffled and augmented on the device."""
    images = max(BENCHMARK_IMAGES, batch_size)
    dataset = synthetic_dataset("train", train_images=images, val_images=1, image_size=resolution, max_object_size=0.7 * resolution)
    loader = DetectionLoader(dataset, resolution, batch_size, train=True, device=device)
    batches = iter(())

    def next_batch():
        nonlocal batches
        batch = next(batches, None)
        if batch is None:  # start the next epoch
            batches = iter(loader)
            batch = next(batches)
        return batch

    return next_batch


class BareObjective:
    """The bare step's loss: a trivial function of the head outputs (no labeling, no real loss)."""

    def loss(self, model: nn.Module, images: torch.Tensor, channels_last: bool) -> torch.Tensor:
        class_logits, box_deltas = model(images)
        return sum(output.float().mean() for output in class_logits + box_deltas)


@dataclass
class OurSteps:
    """Our full trial step and bare model step for one spec, batch size and precision: both are
    the trainer's own step (``Training.step``), the bare one with ``BareObjective`` on a fixed
    random batch already on the device."""

    full: Callable[[], None]
    bare: Callable[[], None]
    precision: Precision


def our_steps(spec_name: str, resolution: int, batch_size: int, device: torch.device, fp32: bool = False, compile: bool = False) -> OurSteps:
    spec = load_spec(spec_name, [f"resolution={resolution}"])
    task = Task(bf16=not fp32, compile=compile, batch_size=batch_size)  # the default optimizer (SGD) and gradient clipping
    precision = precision_for(task, device)
    next_batch = synthetic_loader(resolution, batch_size, device)
    steps_per_epoch = max(BENCHMARK_IMAGES, batch_size) // batch_size
    training, _ = start_training(spec, task, precision, steps_per_epoch, epochs=1, seed=0)
    bare = replace(training, objective=BareObjective())
    images = precision.images(torch.randn(batch_size, 3, resolution, resolution, device=device))
    return OurSteps(lambda: training.step(next_batch()), lambda: bare.step(images), precision)


def describe(device: torch.device) -> str:
    return torch.cuda.get_device_name(device) if device.type == "cuda" else f"{torch.get_num_threads()} threads"


def main() -> None:
    args = parse_args()
    device = torch.device(args.device)
    steps = our_steps(args.spec, args.resolution, args.batch_size, device, args.fp32, args.compile)
    warmup = args.warmup * (3 if args.compile else 1)
    bare = images_per_second(steps.bare, args.steps, warmup, args.batch_size, device)
    full = images_per_second(steps.full, args.steps, warmup, args.batch_size, device)
    precision = "bf16" if steps.precision.amp_dtype is not None else "fp32"
    print(
        f"{args.spec} at {args.resolution}, batch {args.batch_size}, {precision}"
        f"{', channels_last' if steps.precision.channels_last else ''}{', compiled' if args.compile else ''} on {device}"
        f" ({describe(device)}):"
    )
    print(f"  full trial step  {full:8.1f} images/s")
    print(f"  bare model step  {bare:8.1f} images/s")
    print(f"  full / bare      {full / bare:8.2f}")


if __name__ == "__main__":
    main()
