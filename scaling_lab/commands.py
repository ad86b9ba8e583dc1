"""Core subcommands: ``models``, ``measure`` and ``paper-table``."""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from scaling_lab.measure import Measurement, measure
from scaling_lab.paper import OFFICIAL_FLOPS, OFFICIAL_PARAMS, EfficientNetRow, paper_row
from scaling_lab.presets import PRESETS
from scaling_lab.schema import uncounted_text
from scaling_lab.ranges import POSITIVE_INT, flag
from scaling_lab.resolution import resolution_text
from scaling_lab.spec import BackboneSpec, DetectorSpec, Spec
from scaling_lab.spec_files import load_spec


def add_commands(subparsers: argparse._SubParsersAction) -> None:
    models = subparsers.add_parser("models", help="list the preset specs")
    models.add_argument("--json", action="store_true", help="one JSON object: preset name -> spec")
    models.set_defaults(func=list_models)

    counts = subparsers.add_parser("measure", help="count params, FLOPs and activations of a spec (fvcore)")
    counts.add_argument("spec", metavar="NAME_OR_SPEC_FILE", help="a preset name or a YAML/JSON spec file")
    counts.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE", help="change a spec field, e.g. backbone.width=1.2 (repeatable)")
    counts.add_argument("--latency", action="store_true", help="also time the forward pass (batch 1 and --batch-size)")
    counts.add_argument("--batch-size", type=flag(POSITIVE_INT), default=8, help="batch size of the second latency figure (default 8)")
    counts.add_argument("--device", default=None, help="device for latency (default: cuda if available, else cpu)")
    counts.add_argument(
        "--init", default=None, metavar="WEIGHTS", help="time the model with these weights (a checkpoint, a timm/effdet state dict file or model name)"
    )
    counts.add_argument("--no-cache", action="store_true", help="measure again instead of reading the cache")
    counts.add_argument("--json", action="store_true", help="print one JSON object")
    counts.set_defaults(func=measure_command)

    table = subparsers.add_parser("paper-table", help="our params and FLOPs beside the papers' for B0-B7 and D0-D7x")
    table.add_argument("--json", action="store_true", help="print a JSON list of rows")
    table.set_defaults(func=paper_table)


def _summary(spec: Spec) -> dict[str, Any]:
    if isinstance(spec, DetectorSpec):
        return {
            "kind": "detector",
            "resolution": spec.resolution,
            "backbone": f"w{spec.backbone.width} d{spec.backbone.depth}",
            "feature_network": spec.feature_network,
            "fusion": spec.fusion,
            "channels": spec.channels,
            "repeats": spec.feature_repeats,
            "head": spec.head_repeats,
            "levels": f"P{spec.min_level}-P{spec.max_level}",
        }
    assert isinstance(spec, BackboneSpec)
    return {"kind": "backbone", "resolution": spec.resolution, "width": spec.width, "depth": spec.depth, "dropout": spec.dropout}


def _print_table(rows: list[dict[str, Any]]) -> None:
    columns = list(dict.fromkeys(key for row in rows for key in row))
    widths = {c: max(len(c), *(len(str(row.get(c, ""))) for row in rows)) for c in columns}
    print("  ".join(c.ljust(widths[c]) for c in columns))
    for row in rows:
        print("  ".join(str(row.get(c, "")).ljust(widths[c]) for c in columns))


def list_models(args: argparse.Namespace) -> int:
    if args.json:
        print(json.dumps({name: spec.to_dict() for name, spec in PRESETS.items()}, indent=2))
    else:
        _print_table([{"name": name, **_summary(spec)} for name, spec in PRESETS.items()])
    return 0


def _human(value: float) -> str:
    for unit, scale in (("G", 1e9), ("M", 1e6), ("K", 1e3)):
        if abs(value) >= scale:
            return f"{value / scale:.4g}{unit}"
    return f"{value:g}"


def measure_command(args: argparse.Namespace) -> int:
    spec = load_spec(args.spec, args.overrides)
    if args.init:
        spec = spec.replace(init=args.init)
    if spec.init:  # a misfit is an error before anything is measured; latency runs with these weights
        from scaling_lab.models import build_model
        from scaling_lab.models.weights import load_init

        print(f"weights: {load_init(build_model(spec), spec.init).note()}", file=sys.stderr)
    result: Measurement = measure(spec, latency=args.latency, batch_size=args.batch_size, device=args.device, use_cache=not args.no_cache)
    if args.json:
        print(json.dumps({**result.to_dict(), "spec": spec.to_dict()}))
        return 0
    print(f"spec {spec.spec_hash} ({spec.kind}, resolution {resolution_text(spec.resolution)})")
    print(f"params       {result.params:>15,}  ({_human(result.params)})")
    print(f"FLOPs        {result.flops:>15,}  ({_human(result.flops)} multiply-adds: convs, linear, BN, pooling, upsampling)")
    print(f"element-wise {result.flops_elementwise:>15,}  ({_human(result.flops_elementwise)}: add, mul, div, softmax, sigmoid, relu)")
    print(f"activations  {result.activations:>15,}  ({_human(result.activations)})")
    if result.uncounted_ops:
        print(f"uncounted    {uncounted_text(result.uncounted_ops)}")
        significant = result.uncounted_significant
        note = f"may hide multiply-adds: {', '.join(significant)}" if significant else "element-wise, reduction, pooling and padding ops only"
        print(f"             (fvcore has no count for these; {note})")
    if result.latency:
        lat = result.latency
        print(f"latency      on {lat.device}, {lat.dtype}")
        print(f"  batch 1    {lat.batch1.describe()}")
        if lat.batch_size != 1:
            rate = f" ({lat.images_per_second:.1f} images/s)" if lat.images_per_second else ""
            print(f"  batch {lat.batch_size:<4} {lat.batch.describe()}{rate}")
        if not lat.stable:
            print("  an unstable timing is no figure: something else is using the device; time it again when it is idle")
    print()
    _print_table([{"part": part, **{k: _human(v) for k, v in values.items()}} for part, values in result.breakdown.items()])
    return 0


def paper_table_rows() -> list[dict[str, Any]]:
    """Our counts for every preset beside the official code's exact parameter count and the
    official FLOPs (exact where known, else the paper's rounded figure)."""
    rows = []
    for name, params_official in OFFICIAL_PARAMS.items():
        ours = measure(PRESETS[name])
        paper = paper_row(name)
        flops_reference = OFFICIAL_FLOPS.get(name, paper.flops)
        rows.append(
            {
                "model": name,
                "resolution": ours.resolution,
                "params": ours.params,
                "params_official": params_official,
                "params_paper": paper.params,
                "params_diff": (ours.params - params_official) / params_official,
                "flops": ours.flops,
                "flops_paper": flops_reference,
                "flops_paper_source": "official code" if name in OFFICIAL_FLOPS else "paper (rounded)",
                "flops_diff": (ours.flops - flops_reference) / flops_reference,
                "accuracy_paper": paper.top1 if isinstance(paper, EfficientNetRow) else paper.ap_test_dev,
            }
        )
    return rows


def paper_table(args: argparse.Namespace) -> int:
    rows = paper_table_rows()
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    _print_table(
        [
            {
                "model": row["model"],
                "res": row["resolution"],
                "params": f"{row['params']:,}",
                "official": f"{row['params_official']:,}",
                "diff": f"{row['params_diff']:+.2%}",
                "FLOPs": _human(row["flops"]),
                "paper FLOPs": _human(row["flops_paper"]),
                "source": row["flops_paper_source"],
                "FLOPs diff": f"{row['flops_diff']:+.2%}",
            }
            for row in rows
        ]
    )
    print("\nFLOPs are multiply-adds counted by fvcore; the EfficientNet paper prints rounded figures up to ~7 % below a faithful count.")
    return 0
