"""Cost of a spec: parameters, FLOPs and activations counted by fvcore, and measured latency.

FLOPs follow the papers' convention: one per multiply-add, convolutions and linear layers
(plus fvcore's own handles for batch norm, pooling and upsampling). The element-wise ops that
feature fusion uses (add, mul, div, softmax, sigmoid, relu) are counted by extra handles and
reported apart as ``flops_elementwise``, so fusion rules differ in cost while ``flops`` stays
comparable with the papers.

Counts are cached on disk by spec hash and library versions; latencies by spec hash, device,
batch size and dtype.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import platform
import statistics
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from scaling_lab.errors import ScalingLabError
from scaling_lab.models import build_model
from scaling_lab.spec import Spec

ELEMENTWISE_OPS = ("add", "mul", "div", "softmax", "sigmoid", "relu")
# Top-level module name -> part of the model it belongs to.
PARTS = {
    "stem": "backbone",
    "stages": "backbone",
    "backbone": "backbone",
    "head": "classifier",
    "dropout": "classifier",
    "fc": "classifier",
    "extra_levels": "feature_network",
    "feature_network": "feature_network",
    "class_head": "heads",
    "box_head": "heads",
}


def cache_dir() -> Path:
    return Path(os.environ.get("SCALING_LAB_CACHE", Path.home() / ".cache" / "scaling-lab"))


@dataclass(frozen=True)
class Latency:
    device: str
    dtype: str
    batch_size: int
    batch1_ms: float
    batch_ms: float

    @property
    def images_per_second(self) -> float:
        return 1000.0 * self.batch_size / self.batch_ms


@dataclass(frozen=True)
class Measurement:
    spec_hash: str
    resolution: int
    params: int
    flops: int
    flops_elementwise: int
    activations: int
    breakdown: dict[str, dict[str, int]]
    latency: Latency | None = None
    versions: dict[str, str] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def library_versions() -> dict[str, str]:
    import fvcore

    from scaling_lab import __version__

    return {"scaling_lab": __version__, "torch": torch.__version__.split("+")[0], "fvcore": getattr(fvcore, "__version__", "0")}


def _elementwise_handle(name: str):
    from fvcore.nn.jit_handles import get_shape

    def handle(inputs: list[Any], outputs: list[Any]) -> Counter:
        return Counter({f"elementwise.{name}": math.prod(get_shape(outputs[0]) or ())})

    return handle


def _with_activations(flop_handle):
    """fvcore's FLOP handle for an op, plus its output size counted as activations (what
    fvcore's ``ActivationCountAnalysis`` counts), so one trace gives both."""
    from fvcore.nn.jit_handles import get_shape

    def handle(inputs: list[Any], outputs: list[Any]) -> Counter:
        flops = flop_handle(inputs, outputs)
        counts = Counter(flops) if isinstance(flops, Counter) else Counter({"matmul": flops})
        counts["activations"] += math.prod(get_shape(outputs[0]) or ())
        return counts

    return handle


def count(spec: Spec) -> dict[str, Any]:
    """Parameters, FLOPs and activations of one image at the spec's resolution, with a breakdown
    by part (backbone / feature network / heads, or backbone / classifier)."""
    from fvcore.nn import FlopCountAnalysis, jit_handles

    model = build_model(spec).eval()
    analysis = FlopCountAnalysis(model, torch.zeros(1, 3, spec.resolution, spec.resolution))
    for op, flop_handle in {
        "aten::_convolution": jit_handles.conv_flop_jit,
        "aten::addmm": jit_handles.addmm_flop_jit,
        "aten::linear": jit_handles.linear_flop_jit,
        "aten::matmul": jit_handles.matmul_flop_jit,
        "aten::bmm": jit_handles.bmm_flop_jit,
        "aten::einsum": jit_handles.einsum_flop_jit,
    }.items():
        analysis.set_op_handle(op, _with_activations(flop_handle))
    for name in ELEMENTWISE_OPS:
        for op in (f"aten::{name}", f"aten::{name}_"):
            analysis.set_op_handle(op, _elementwise_handle(name))
    analysis.unsupported_ops_warnings(False).uncalled_modules_warnings(False).tracer_warnings("none")
    with torch.no_grad():
        counts_by_module = analysis.by_module_and_operator()

    breakdown: dict[str, dict[str, int]] = {}
    for name, module in model.named_children():
        part = breakdown.setdefault(PARTS[name], {"params": 0, "flops": 0, "flops_elementwise": 0, "activations": 0})
        part["params"] += sum(p.numel() for p in module.parameters())
        for op, value in counts_by_module.get(name, {}).items():
            key = "activations" if op == "activations" else "flops_elementwise" if op.startswith("elementwise.") else "flops"
            part[key] += int(value)
    totals = {key: sum(part[key] for part in breakdown.values()) for key in ("params", "flops", "flops_elementwise", "activations")}
    return {"resolution": spec.resolution, **totals, "breakdown": breakdown}


def resolve_device(device: str | torch.device | None) -> torch.device:
    """The device to run on: CUDA when available unless one is named; a bad name is an error."""
    if device is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        resolved = torch.device(device)
    except (RuntimeError, TypeError):
        raise ScalingLabError(f"device {device!r} is not a torch device; valid examples: cpu, cuda, cuda:1") from None
    if resolved.type == "cuda" and not torch.cuda.is_available():
        raise ScalingLabError(f"device {device!r} asked for, but CUDA is not available here; use --device cpu")
    return resolved


def time_latency(spec: Spec, batch_size: int = 8, device: str | None = None, dtype: str = "float32", warmup: int = 3, runs: int = 10) -> Latency:
    """Median forward latency after warm-up, at batch 1 and at ``batch_size``, in eval mode; with
    the spec's ``init`` weights loaded where it names them (values can matter on a CPU: denormals)."""
    device = str(resolve_device(device))
    model = build_model(spec)
    if spec.init:
        from scaling_lab.models.weights import load_init

        load_init(model, spec.init)
    model = model.eval().to(device, memory_format=torch.channels_last)
    torch_dtype = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}[dtype]

    def median_ms(batch: int) -> float:
        images = torch.randn(batch, 3, spec.resolution, spec.resolution, device=device).to(memory_format=torch.channels_last)
        timings = []
        with torch.inference_mode(), torch.autocast(device_type=device.split(":")[0], dtype=torch_dtype, enabled=dtype != "float32"):
            for i in range(warmup + runs):
                if device.startswith("cuda"):
                    torch.cuda.synchronize()
                start = time.perf_counter()
                model(images)
                if device.startswith("cuda"):
                    torch.cuda.synchronize()
                if i >= warmup:
                    timings.append((time.perf_counter() - start) * 1000)
        return statistics.median(timings)

    return Latency(device=_device_name(device), dtype=dtype, batch_size=batch_size, batch1_ms=median_ms(1), batch_ms=median_ms(batch_size))


def _device_name(device: str) -> str:
    if device.startswith("cuda"):
        return torch.cuda.get_device_name(torch.device(device))
    return f"cpu:{platform.processor() or platform.machine()}:{torch.get_num_threads()}threads"


def _read_json(path: Path) -> dict[str, Any] | None:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None  # missing or half-written: measure again


def _write_json(path: Path, data: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.NamedTemporaryFile("w", dir=path.parent, suffix=".tmp", delete=False) as handle:
        json.dump(data, handle)
    os.replace(handle.name, path)


def measure(
    spec: Spec,
    latency: bool = False,
    batch_size: int = 8,
    device: str | None = None,
    dtype: str = "float32",
    use_cache: bool = True,
) -> Measurement:
    """Count (and optionally time) a spec, reading and filling the on-disk cache."""
    versions = library_versions()
    key = f"{spec.spec_hash}-{'-'.join(f'{k}{v}' for k, v in sorted(versions.items()))}"
    counts_path = cache_dir() / "measure" / f"{key}.json"
    counts = _read_json(counts_path) if use_cache else None
    if counts is None:
        counts = count(spec)
        if use_cache:
            _write_json(counts_path, counts)
    timed = None
    if latency:
        if batch_size < 1:
            raise ScalingLabError(f"latency batch size {batch_size} must be at least 1")
        device = str(resolve_device(device))
        latency_path = cache_dir() / "latency" / f"{key}-{_device_name(device)}-b{batch_size}-{dtype}.json".replace("/", "_")
        cached = _read_json(latency_path) if use_cache else None
        timed = Latency(**cached) if cached else time_latency(spec, batch_size, device, dtype)
        if use_cache and cached is None:
            _write_json(latency_path, dataclasses.asdict(timed))
    return Measurement(spec_hash=spec.spec_hash, latency=timed, versions=versions, **counts)

