"""Data-parallel training throughput: the same trial (same global batch, seed and data) on 1 and
on N workers, in training images per second, with the final training loss of each (they agree:
N workers take the steps of one process, up to the order of floating-point sums, once drop-path
is off: with it each worker draws its own masks).

The time from calling ``run_trial`` to its last validation's report counts, so starting the
workers, loading the data, building the model and one validation (at the end, on a few images)
come with the steps; Ray's own start does not (it is started first). On a CPU of few cores expect
little gain: the workers share them.

    python benchmarks/data_parallel_speed.py                             # 1 and 2 workers, CPU
    python benchmarks/data_parallel_speed.py --workers 1 4 --device cuda --gpus-per-worker 1
"""

from __future__ import annotations

import argparse
import os
import time

import ray
import torch

from scaling_lab.spec_files import load_spec
from scaling_lab.train import run_trial
from scaling_lab.trial import Budget, Task, Workers


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--spec", default="efficientdet-d0", help="preset or spec file (default: efficientdet-d0)")
    parser.add_argument("--set", dest="overrides", action="append", default=["backbone.width=0.25", "backbone.depth=0.34", "backbone.drop_connect=0", "channels=16"])
    parser.add_argument("--resolution", type=int, default=128)
    parser.add_argument("--batch-size", type=int, default=8, help="the global batch")
    parser.add_argument("--images", type=int, default=32, help="synthetic training images")
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--gpus-per-worker", type=float, default=0.0)
    return parser.parse_args()


def main() -> None:
    args = parse_args()
    spec = load_spec(args.spec, [*args.overrides, f"resolution={args.resolution}"])
    scenes = {"train_images": args.images, "val_images": 4, "image_size": args.resolution, "max_object_size": 0.7 * args.resolution}
    task = Task(synthetic=tuple(sorted(scenes.items())), batch_size=args.batch_size, latency=False)
    budget = Budget(epochs=args.epochs, eval_every=args.epochs)
    cores = os.cpu_count() or 1
    ray.init(num_cpus=cores, include_dashboard=False, log_to_driver=False)
    print(f"{args.spec} ({', '.join(args.overrides)}) at {args.resolution}, global batch {args.batch_size}, "
          f"{args.images} images x {args.epochs} epochs on {args.device} ({cores} cores):")
    for count in args.workers:
        workers = Workers(count, cpus_per_worker=max(1, cores // count), gpus_per_worker=args.gpus_per_worker)
        if count == 1:
            torch.set_num_threads(max(1, cores))
        reported: list[float] = []
        started = time.perf_counter()
        result = run_trial(spec, task, budget, device=args.device, workers=workers, report=lambda *_, times=reported: times.append(time.perf_counter()))
        images_per_s = args.images * args.epochs / (reported[-1] - started)
        print(f"  {count} worker(s)  {images_per_s:8.2f} images/s   final train loss {result.curve[-1]['train_loss']:.5f}")
    ray.shutdown()


if __name__ == "__main__":
    main()
