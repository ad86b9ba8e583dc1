"""Many small trials on one GPU, and the memory estimate ``gpus: auto`` packs them by.

``memory``: for each detector and batch size, the estimate (``estimated_training_bytes``, from
the spec's fvcore counts) against the measured peak of the trial's training step at the preset
resolution (``torch.cuda.max_memory_allocated``; the caching allocator's reserved peak beside
it). Target: within 25 %, and never below the reserved peak by more than that (an estimate too
low packs trials into an OOM).

``packing``: runs a study through the Ray backend with ``resources.gpus`` 1, 0.25 and auto and
prints trials per hour, over the whole run (Ray start included) and over the span from the
first trial's start to the last one's end. Target: packed >= 2.5x one at a time.

    python benchmarks/gpu_packing.py memory --models d0,d1,d2,d3 --batch-sizes 8,16,32
    python benchmarks/gpu_packing.py packing --study studies/quickstart.yaml --set task.epochs=5 --set repeats=2
    python benchmarks/gpu_packing.py packing --study studies/fpn_ablation.yaml --profile cpu --set repeats=2
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from train_speed import describe, our_steps, synchronize  # noqa: E402

from scaling_lab.spec_files import load_spec  # noqa: E402
from scaling_lab.study import load_study, run_study  # noqa: E402
from scaling_lab.study.ray_backend import estimated_training_bytes  # noqa: E402
from scaling_lab.study.candidate import cost_counts  # noqa: E402


def memory(args) -> list[dict]:
    device = torch.device(args.device)
    rows = []
    for name in args.models.split(","):
        spec = load_spec(f"efficientdet-{name}")
        costs = cost_counts(spec)
        for batch_size in (int(b) for b in args.batch_sizes.split(",")):
            estimate = estimated_training_bytes(costs, batch_size)
            gc.collect()  # the previous configuration's model and optimizer
            if device.type == "cuda":
                torch.cuda.empty_cache()
                torch.cuda.reset_peak_memory_stats(device)
            steps = our_steps(f"efficientdet-{name}", spec.resolution, batch_size, device)
            for _ in range(args.steps):
                steps.full()
            synchronize(device)
            peak = torch.cuda.max_memory_allocated(device) if device.type == "cuda" else float("nan")
            reserved = torch.cuda.max_memory_reserved(device) if device.type == "cuda" else float("nan")
            row = {"model": name, "resolution": spec.resolution, "batch_size": batch_size, "estimate_gb": estimate / 1e9,
                   "peak_allocated_gb": peak / 1e9, "peak_reserved_gb": reserved / 1e9, "estimate_over_peak": estimate / peak,
                   "activations": costs["activations"], "params": costs["params"]}
            rows.append(row)
            print(f"{name} {spec.resolution} b{batch_size:<3} estimate {row['estimate_gb']:7.2f} GB  peak {row['peak_allocated_gb']:7.2f} GB"
                  f"  reserved {row['peak_reserved_gb']:7.2f} GB  estimate/peak {row['estimate_over_peak']:5.2f}", flush=True)
            del steps
            if args.json:
                args.json.write_text(json.dumps(rows, indent=1, default=str))
    print(f"(on {describe(device)}; training step in bf16 + channels_last, {args.steps} steps)")
    return rows


def _seconds(stamp: str) -> float:
    return datetime.fromisoformat(stamp).timestamp()


def packing(args) -> list[dict]:
    rows = []
    for gpus in args.gpus.split(","):
        run_dir = Path(tempfile.mkdtemp(prefix=f"packing-{gpus}-", dir=args.work_dir))
        overrides = [*args.set, "backend=ray", f"resources.gpus={gpus}", f"resources.cpus={args.cpus}"]
        config = load_study(args.study, args.profile, overrides, run_dir=run_dir)
        started = time.perf_counter()
        frame = run_study(config, backend="ray", out=None)
        wall = time.perf_counter() - started
        done = frame[frame["state"] == "complete"]
        span = max(map(_seconds, frame["finished"])) - min(map(_seconds, frame["started"]))
        row = {"study": config.name, "profile": args.profile, "gpus": gpus, "trials": len(frame), "complete": len(done),
               "states": frame["state"].value_counts().to_dict(), "wall_s": wall, "span_s": span,
               "trials_per_hour": 3600 * len(done) / wall, "trials_per_hour_span": 3600 * len(done) / span,
               "mean_trial_s": float(frame["wall_time_s"].mean()), "errors": sorted(set(frame["error"].dropna()) - {""})[:3]}
        rows.append(row)
        print(f"{config.name} gpus={gpus:<5} {row['complete']}/{row['trials']} complete  wall {wall:6.1f} s  "
              f"{row['trials_per_hour']:7.0f} trials/h ({row['trials_per_hour_span']:7.0f} over the trials' span)  "
              f"mean trial {row['mean_trial_s']:5.1f} s", flush=True)
        if args.json:  # after every setting: a run cut short keeps what it measured
            args.json.write_text(json.dumps(rows, indent=1, default=str))
    base = rows[0]["trials_per_hour"]
    for row in rows[1:]:
        print(f"  gpus={row['gpus']} / gpus={rows[0]['gpus']}: {row['trials_per_hour'] / base:.2f}x trials per hour")
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True)
    mem = commands.add_parser("memory")
    mem.add_argument("--models", default="d0,d1,d2,d3")
    mem.add_argument("--batch-sizes", default="8,16,32")
    mem.add_argument("--steps", type=int, default=3)
    mem.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    pack = commands.add_parser("packing")
    pack.add_argument("--study", required=True)
    pack.add_argument("--profile")
    pack.add_argument("--set", action="append", default=[], help="study override, e.g. task.epochs=5")
    pack.add_argument("--gpus", default="1,0.25,auto", help="resources.gpus values to compare, the first is the baseline")
    pack.add_argument("--cpus", type=float, default=1)
    pack.add_argument("--work-dir", default=None, help="where the run folders go (default: a temporary folder)")
    for sub in (mem, pack):
        sub.add_argument("--json", type=Path, help="also write the rows to this file")
    args = parser.parse_args()
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    memory(args) if args.command == "memory" else packing(args)


if __name__ == "__main__":
    main()
