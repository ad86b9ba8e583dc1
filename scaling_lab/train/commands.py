"""``scaling-lab train``: one trial from the command line; ``scaling-lab evaluate``: the
validation metrics of given weights without training.

Prints the final metrics, one ``name value`` line each, or with ``--json`` the whole
``TrialResult`` as one JSON object on stdout (NaN metrics, such as APl without large objects,
become null). The progress bar goes to stderr.
"""

from __future__ import annotations

import argparse
import json
import math
import os
from typing import Any

from scaling_lab.files import check_output_folder, folder_argument
from scaling_lab.ranges import BUDGET_RANGES, POSITIVE_INT, SEED_RANGE, TASK_RANGES, flag
from scaling_lab.schema import flatten_spec
from scaling_lab.spec_files import load_spec, parse_overrides
from scaling_lab.trial import BAD_DATA, Budget, Task, Workers


def _json_safe(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {key: _json_safe(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_json_safe(item) for item in value]
    return value


def add_commands(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "train",
        help="train and validate one spec (a trial)",
        description="Train one spec on a dataset and print its validation metrics.",
    )
    parser.add_argument("spec", metavar="NAME_OR_SPEC", help="a preset name (efficientdet-d0) or a YAML/JSON spec file")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE", help="override a spec field (repeatable)")
    parser.add_argument(
        "--data",
        default="synthetic",
        help="'synthetic' (generated shapes) or a folder with train/ and val/ splits (default: synthetic)",
    )
    parser.add_argument("--epochs", type=flag(BUDGET_RANGES["epochs"]), default=Budget.epochs, help=f"training epochs (default: {Budget.epochs})")
    parser.add_argument("--batch-size", type=flag(TASK_RANGES["batch_size"]), default=Task.batch_size, help=f"batch size (default: {Task.batch_size})")
    parser.add_argument("--lr", type=flag(TASK_RANGES["lr"]), default=None, help="peak learning rate (default for sgd: 0.08 x batch size / 64, the official rate scaled linearly)")
    parser.add_argument("--optimizer", choices=("sgd", "adamw"), default=Task.optimizer, help=f"(default: {Task.optimizer})")
    parser.add_argument("--max-train-images", type=flag(BUDGET_RANGES["max_train_images"]), default=None, help="train on at most this many images")
    parser.add_argument("--max-val-images", type=flag(BUDGET_RANGES["max_val_images"]), default=None, help="validate on at most this many images")
    parser.add_argument("--seed", type=flag(SEED_RANGE), default=0, help="random seed (default: 0)")
    parser.add_argument("--device", default=None, help="torch device, e.g. cpu, cuda, cuda:1 (default: cuda when available)")
    parser.add_argument("--checkpoint-dir", type=folder_argument, default=None, help="save a checkpoint every epoch here and resume from it")
    parser.add_argument(
        "--logdir", type=folder_argument, default=None,
        help="write the trial's curves here in TensorBoard's format (tensorboard --logdir DIR); with --checkpoint-dir a resumed run continues them",
    )
    parser.add_argument(
        "--workers", type=flag(POSITIVE_INT), default=1,
        help="train data-parallel on this many processes through a local Ray (one GPU each on CUDA, the CPU cores shared "
        "out otherwise); --batch-size is the global batch, split among them (default: 1, in this process)",
    )
    parser.add_argument(
        "--bad-data", choices=BAD_DATA, default=Task.bad_data,
        help="unusable images and annotations: an error naming them (default), or skip them and count them in the notes",
    )
    _add_init_arguments(parser)
    parser.add_argument("--freeze-backbone", action="store_true", help="train everything but the backbone")
    parser.add_argument("--freeze-backbone-bn", action="store_true", help="keep the backbone's batch norms as loaded")
    parser.add_argument(
        "--backbone-lr-scale", type=flag(TASK_RANGES["backbone_lr_scale"]), default=Task.backbone_lr_scale, help="the backbone's learning rate as a fraction of --lr (default: 1)"
    )
    parser.add_argument("--no-latency", action="store_true", help="skip timing the model")
    parser.add_argument("--json", action="store_true", help="print the whole trial result as one JSON object")
    parser.set_defaults(func=run_train_command)

    evaluate = subparsers.add_parser(
        "evaluate",
        help="validate given weights without training (COCO AP, or top-1/top-5)",
        description="Load weights into a spec and print its validation metrics, as a trial validates.",
    )
    evaluate.add_argument("spec", metavar="NAME_OR_SPEC", help="a preset name (efficientdet-d0) or a YAML/JSON spec file")
    evaluate.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE", help="override a spec field (repeatable)")
    evaluate.add_argument("--data", default="synthetic", help="'synthetic' or a folder with a val/ split (default: synthetic)")
    _add_init_arguments(evaluate)
    evaluate.add_argument("--batch-size", type=int, default=Task.batch_size, help=f"batch size (default: {Task.batch_size})")
    evaluate.add_argument("--max-val-images", type=int, default=None, help="validate on at most this many images")
    evaluate.add_argument("--device", default=None, help="torch device, e.g. cpu, cuda, cuda:1 (default: cuda when available)")
    evaluate.add_argument("--json", action="store_true", help="print one JSON object")
    evaluate.set_defaults(func=run_evaluate_command)


def _add_init_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--init",
        default=None,
        metavar="WEIGHTS",
        help="start from weights: a checkpoint of ours, a timm/effdet state dict file, or a timm/effdet model name (tf_efficientdet_d0)",
    )
    parser.add_argument(
        "--val-images", default=None, metavar="DIR", help="COCO-format validation images (default: <data>/val/images), e.g. coco/val2017"
    )
    parser.add_argument(
        "--val-annotations", default=None, metavar="FILE", help="its annotation file (default: <data>/val/annotations.json)"
    )
    parser.add_argument(
        "--labels",
        choices=("contiguous", "category_ids"),
        default=Task.labels,
        help="class numbering of COCO-format data: contiguous, or category id - 1 (COCO's 90, as effdet's weights) (default: contiguous)",
    )


def train_hyperparameters(args: argparse.Namespace, task: Task) -> dict[str, Any]:
    """What ``train --logdir`` records as the trial's hyperparameters: the spec as named, its
    ``--set`` overrides and the recipe's flags."""
    return {
        "spec": args.spec, **flatten_spec(parse_overrides(args.overrides)), "lr": task.peak_lr, "batch_size": task.batch_size,
        "optimizer": task.optimizer, "epochs": args.epochs, "seed": args.seed,
    }


def run_train_command(args: argparse.Namespace) -> int:
    from scaling_lab.latency import resolve_device
    from scaling_lab.spec import DetectorSpec
    from scaling_lab.train.tracking import TrialTracking
    from scaling_lab.train.trainer import run_trial

    spec = load_spec(args.spec, args.overrides)
    for folder, flag_name in ((args.checkpoint_dir, "--checkpoint-dir"), (args.logdir, "--logdir")):
        if folder is not None:
            check_output_folder(folder, flag_name)
    task = Task(
        kind="detection" if isinstance(spec, DetectorSpec) else "classification",
        data=args.data,
        batch_size=args.batch_size,
        lr=args.lr,
        optimizer=args.optimizer,
        latency=not args.no_latency,
        bad_data=args.bad_data,
        init=args.init,
        val_images=args.val_images,
        val_annotations=args.val_annotations,
        labels=args.labels,
        freeze_backbone=args.freeze_backbone,
        freeze_backbone_bn=args.freeze_backbone_bn,
        backbone_lr_scale=args.backbone_lr_scale,
    )
    budget = Budget(epochs=args.epochs, max_train_images=args.max_train_images, max_val_images=args.max_val_images)
    on_cuda = resolve_device(args.device).type == "cuda"
    workers = Workers(args.workers, cpus_per_worker=max(1, (os.cpu_count() or 1) // args.workers), gpus_per_worker=1.0 if on_cuda else 0.0)
    tracking = TrialTracking(args.logdir, train_hyperparameters(args, task), spec.spec_hash) if args.logdir is not None else None
    result = run_trial(
        spec, task, budget, seed=args.seed, checkpoint_dir=args.checkpoint_dir, device=args.device, progress=True, workers=workers, tracking=tracking
    )
    if args.json:
        print(json.dumps(_json_safe(result.to_dict())))
        return 0
    for note in result.notes:
        print(f"note: {note}")
    for name, value in result.metrics.items():
        print(f"{name} {value:.4f}")
    latency = f"{result.latency_ms:.1f} ms" if result.latency_ms is not None else "not measured"
    print(f"params {result.params}\nflops {result.flops}\nlatency (batch 1) {latency}\nwall time {result.wall_time_s:.1f} s")
    return 0


def run_evaluate_command(args: argparse.Namespace) -> int:
    from scaling_lab.spec import DetectorSpec
    from scaling_lab.train.scoring import evaluate_spec

    spec = load_spec(args.spec, args.overrides)
    task = Task(
        kind="detection" if isinstance(spec, DetectorSpec) else "classification",
        data=args.data,
        batch_size=args.batch_size,
        init=args.init,
        val_images=args.val_images,
        val_annotations=args.val_annotations,
        labels=args.labels,
        latency=False,
    )
    result = evaluate_spec(spec, task, Budget(epochs=1, max_val_images=args.max_val_images), args.device)
    if args.json:
        print(json.dumps(_json_safe(result)))
        return 0
    for note in result["notes"]:
        print(f"note: {note}")
    for name, value in result["metrics"].items():
        print(f"{name} {value:.4f}")
    print(f"images {result['images']}")
    return 0
