"""Our training step beside effdet's, in one process on one device, several repeats.

effdet (``pip install effdet``) is a benchmark-only dependency. For each model both sides get
the same batch size, resolution and precision (bf16 autocast + channels_last on a GPU):

- ours, full: ``run_trial``'s step (the loader's next batch, anchor labelling, focal + Huber
  loss, backward, gradient clipping, SGD), as in ``benchmarks/train_speed.py``;
- ours, bare: forward + backward + SGD on a tensor already on the device, trivial loss;
- effdet, full: ``tf_efficientdet_dN`` in ``DetBenchTrain`` with its ``AnchorLabeler`` and
  ``DetectionLoss``, fed the same loader's batches (boxes turned to its yxyx, 1-based classes),
  then backward, clip, SGD;
- effdet, bare: its network alone, as our bare step.

Each repeat times every variant in turn (interleaved, so drift hits all alike); the median of
the repeats is printed, with the ratios the targets are stated in. Then inference (network
forward, batch 1) of both.

    python benchmarks/compare_effdet.py                       # D0 512 b32 and D3 896 b16, GPU
    python benchmarks/compare_effdet.py --device cpu --models d0 --resolution 128 --batch-size 2 --steps 2 --repeats 1
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent))
from train_speed import describe, images_per_second, our_steps, synchronize, synthetic_loader  # noqa: E402

from scaling_lab.models import build_model  # noqa: E402
from scaling_lab.spec_files import load_spec  # noqa: E402
from scaling_lab.train.optimization import make_optimizer  # noqa: E402
from scaling_lab.trial import Task  # noqa: E402

DEFAULT_SIZES = {"d0": (512, 32), "d3": (896, 16)}  # resolution, batch size


def import_effdet():
    """effdet, importable also beside a CPU torch whose torchvision is a CUDA build (its
    compiled ops do not load there; effdet's training path needs none of them)."""
    try:
        import torchvision  # noqa: F401
    except RuntimeError as error:
        if "torchvision::" not in str(error):
            raise
        for name in [name for name in sys.modules if name == "torchvision" or name.startswith("torchvision.")]:
            del sys.modules[name]
        library = torch.library.Library("torchvision", "DEF")  # kept alive by the module below
        for op in ("nms", "qnms"):
            library.define(f"{op}(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")
        import_effdet.library = library
    try:
        import effdet
    except ImportError:
        raise SystemExit("effdet is not installed: pip install effdet (a benchmark-only dependency)") from None
    return effdet


def effdet_steps(model_name: str, resolution: int, batch_size: int, device: torch.device, amp_dtype, channels_last: bool):
    effdet = import_effdet()
    bench = effdet.create_model(
        f"tf_efficientdet_{model_name}", bench_task="train", bench_labeler=True, pretrained=False, pretrained_backbone=False,
        num_classes=90, image_size=(resolution, resolution),
    ).to(device, memory_format=torch.channels_last if channels_last else torch.preserve_format)
    bench.train()
    task = Task()
    optimizer = make_optimizer(bench, task)
    next_batch = synthetic_loader(resolution, batch_size, device)

    def optimize(loss: torch.Tensor) -> None:
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        nn.utils.clip_grad_norm_(bench.parameters(), task.grad_clip)
        optimizer.step()

    def full_step() -> None:
        batch = next_batch()
        padding = batch.labels < 0
        boxes = batch.boxes[..., [1, 0, 3, 2]].masked_fill(padding[..., None], -1.0)  # xyxy -> yxyx, effdet pads with -1
        classes = torch.where(padding, -1, batch.labels + 1).float()  # effdet's classes start at 1
        images = batch.images.contiguous(memory_format=torch.channels_last) if channels_last else batch.images
        with torch.autocast(device.type, dtype=amp_dtype, enabled=amp_dtype is not None):
            loss = bench(images, {"bbox": boxes, "cls": classes})["loss"]
        optimize(loss)

    images = torch.randn(batch_size, 3, resolution, resolution, device=device)
    if channels_last:
        images = images.contiguous(memory_format=torch.channels_last)

    def bare_step() -> None:
        with torch.autocast(device.type, dtype=amp_dtype, enabled=amp_dtype is not None):
            class_out, box_out = bench.model(images)
            loss = sum(output.float().mean() for output in class_out + box_out)
        optimize(loss)

    return full_step, bare_step, bench.model


def inference_ms(model: nn.Module, resolution: int, device: torch.device, amp_dtype, channels_last: bool, runs: int) -> float:
    """Median batch-1 forward time in eval mode, after warm-up."""
    model.eval()
    image = torch.randn(1, 3, resolution, resolution, device=device)
    if channels_last:
        image = image.contiguous(memory_format=torch.channels_last)
    timings = []
    with torch.inference_mode(), torch.autocast(device.type, dtype=amp_dtype, enabled=amp_dtype is not None):
        for index in range(runs + 5):
            synchronize(device)
            started = time.perf_counter()
            model(image)
            synchronize(device)
            if index >= 5:
                timings.append((time.perf_counter() - started) * 1000)
    model.train()
    return statistics.median(timings)


def compare(model_name: str, resolution: int, batch_size: int, device: torch.device, args) -> dict:
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)
    started = time.perf_counter()
    ours = our_steps(f"efficientdet-{model_name}", resolution, batch_size, device, args.fp32, args.compile)
    effdet_full, effdet_bare, effdet_model = effdet_steps(model_name, resolution, batch_size, device, ours.precision.amp_dtype, ours.precision.channels_last)
    variants = {"ours_full": ours.full, "ours_bare": ours.bare, "effdet_full": effdet_full, "effdet_bare": effdet_bare}
    warmup = args.warmup * (3 if args.compile else 1)
    print(f"# {model_name}: built both in {time.perf_counter() - started:.1f} s", file=sys.stderr, flush=True)
    for name, step in variants.items():  # first calls (cuDNN autotuning, compilation) stay out of every repeat
        for _ in range(warmup):
            step()
        synchronize(device)
        print(f"# {model_name}: {name} warmed up at {time.perf_counter() - started:.1f} s", file=sys.stderr, flush=True)
    rates: dict[str, list[float]] = {name: [] for name in variants}
    for _ in range(args.repeats):
        for name, step in variants.items():
            rates[name].append(images_per_second(step, args.steps, 1, batch_size, device))
    median = {name: statistics.median(values) for name, values in rates.items()}
    result = {
        "model": model_name, "resolution": resolution, "batch_size": batch_size, "images_per_s": median, "repeats": rates,
        "full_vs_effdet": median["ours_full"] / median["effdet_full"], "full_vs_bare": median["ours_full"] / median["ours_bare"],
        "peak_memory_gb": torch.cuda.max_memory_allocated(device) / 1e9 if device.type == "cuda" else None,
    }
    if args.inference_runs:
        spec = load_spec(f"efficientdet-{model_name}", [f"resolution={resolution}"])
        our_model = build_model(spec).to(device, memory_format=torch.channels_last if ours.precision.channels_last else torch.preserve_format)
        result["inference_b1_ms"] = {
            "ours": inference_ms(our_model, resolution, device, ours.precision.amp_dtype, ours.precision.channels_last, args.inference_runs),
            "effdet": inference_ms(effdet_model, resolution, device, ours.precision.amp_dtype, ours.precision.channels_last, args.inference_runs),
        }
    return result


HEADER = f"{'model':<14}{'ours full':>11}{'ours bare':>11}{'effdet full':>13}{'effdet bare':>13}{'ours/effdet':>13}{'full/bare':>11}{'inf b1 ours':>13}{'effdet':>10}"


def row(result: dict) -> str:
    rate, inference = result["images_per_s"], result.get("inference_b1_ms") or {}
    name = f"{result['model']} {result['resolution']} b{result['batch_size']}"
    return (
        f"{name:<14}{rate['ours_full']:11.1f}{rate['ours_bare']:11.1f}{rate['effdet_full']:13.1f}{rate['effdet_bare']:13.1f}"
        f"{result['full_vs_effdet']:13.2f}{result['full_vs_bare']:11.2f}"
        + (f"{inference['ours']:10.2f} ms{inference['effdet']:7.2f} ms" if inference else "")
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", default="d0,d3", help="comma-separated, of d0..d7 (default d0,d3)")
    parser.add_argument("--resolution", type=int, help="override every model's resolution (default: D0 512, D3 896)")
    parser.add_argument("--batch-size", type=int, help="override every model's batch size (default: D0 32, D3 16)")
    parser.add_argument("--steps", type=int, default=15, help="timed steps per variant and repeat")
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--inference-runs", type=int, default=50, help="timed batch-1 forwards (0: none)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--fp32", action="store_true", help="no bf16 autocast (the default on GPU)")
    parser.add_argument("--compile", action="store_true", help="torch.compile our model")
    parser.add_argument("--json", type=Path, help="also write the figures to this file (after each model)")
    args = parser.parse_args()
    device = torch.device(args.device)
    precision = "fp32" if args.fp32 or device.type != "cuda" else "bf16 + channels_last"
    print(f"Training images/s on {describe(device)}, {precision}{', ours compiled' if args.compile else ''}; median of {args.repeats} repeats of {args.steps} steps")
    print(HEADER, flush=True)
    results = []
    for name in args.models.split(","):
        resolution, batch_size = DEFAULT_SIZES.get(name, (512, 8))
        results.append(compare(name, args.resolution or resolution, args.batch_size or batch_size, device, args))
        print(row(results[-1]), flush=True)
        if args.json:
            args.json.write_text(json.dumps({"device": describe(device), "precision": precision, "results": results}, indent=1))


if __name__ == "__main__":
    main()
