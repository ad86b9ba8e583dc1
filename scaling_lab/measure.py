"""Cost of a spec: parameters, FLOPs and activations counted by fvcore (and, on request, its
latency: ``scaling_lab.latency``).

FLOPs follow the papers' convention: one per multiply-add, convolutions and linear layers
(plus fvcore's own handles for batch norm, adaptive pooling and upsampling). The element-wise
ops that feature fusion uses (add, mul, div, softmax, sigmoid, relu) are counted by extra
handles and reported apart as ``flops_elementwise``, so fusion rules differ in cost while
``flops`` stays comparable with the papers. Operators fvcore cannot count are recorded with
their call counts (``uncounted_ops``).

Counts are cached on disk (``scaling_lab.measure_cache``) by spec hash, library versions and a
fingerprint of the source that builds and counts the model, so edited code never serves stale
figures.
"""

from __future__ import annotations

import dataclasses
import math
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import torch

from scaling_lab.latency import Latency, measure_latency
from scaling_lab.measure_cache import COUNTING_LIBRARIES, cache_dir, measurement_key, read_cached, write_cached
from scaling_lab.models import build_model
from scaling_lab.schema import library_versions
from scaling_lab.spec import Spec

ELEMENTWISE_OPS = ("add", "mul", "div", "softmax", "sigmoid", "relu")
# Operators fvcore has no count for that lie outside the papers' multiply-add convention anyway:
# element-wise maths, reductions, pooling and padding, a few operations per element of a tensor
# the network computes. Any other uncounted operator (attention, a custom kernel) may hide
# multiply-adds, so a FLOPs constraint cannot be trusted where one appears.
NEGLIGIBLE_UNCOUNTED_OPS = frozenset(
    f"aten::{name}"
    for name in (
        "add", "sub", "rsub", "mul", "div", "neg", "abs", "exp", "log", "sqrt", "rsqrt", "pow", "reciprocal",
        "relu", "relu6", "silu", "sigmoid", "tanh", "gelu", "hardtanh", "hardswish", "hardsigmoid", "leaky_relu",
        "softmax", "log_softmax", "clamp_min", "mean", "sum", "amax", "max_pool2d", "avg_pool2d", "pad",
    )
)
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




@dataclass(frozen=True)
class Measurement:
    spec_hash: str
    resolution: int | list[int]  # [height, width] for a rectangle, as the spec serializes it
    params: int
    flops: int
    flops_elementwise: int
    activations: int
    breakdown: dict[str, dict[str, int]]
    uncounted_ops: dict[str, int] = field(default_factory=dict)  # operator -> calls fvcore could not count
    latency: Latency | None = None
    versions: dict[str, str] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @property
    def uncounted_significant(self) -> dict[str, int]:
        """The uncounted operators that may hide multiply-adds (``significant_uncounted``)."""
        return significant_uncounted(self.uncounted_ops)


def significant_uncounted(uncounted: dict[str, int]) -> dict[str, int]:
    """Uncounted operators outside ``NEGLIGIBLE_UNCOUNTED_OPS`` (in-place forms included)."""
    return {op: calls for op, calls in uncounted.items() if op.rstrip("_") not in NEGLIGIBLE_UNCOUNTED_OPS}


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
    analysis = FlopCountAnalysis(model, torch.zeros(1, 3, *spec.input_size))
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
    uncounted = {op: int(calls) for op, calls in sorted(analysis.unsupported_ops().items())}
    return {"resolution": spec.to_dict()["resolution"], **totals, "breakdown": breakdown, "uncounted_ops": uncounted}


def measure(
    spec: Spec,
    latency: bool = False,
    batch_size: int = 8,
    device: str | None = None,
    dtype: str = "float32",
    use_cache: bool = True,
) -> Measurement:
    """Count (and optionally time, see ``measure_latency``) a spec, reading and filling the on-disk cache."""
    counts_path = cache_dir() / "measure" / f"{measurement_key(spec)}.json"
    counts = read_cached(counts_path) if use_cache else None
    if counts is None:
        counts = count(spec)
        if use_cache:
            write_cached(counts_path, counts)
    timed = measure_latency(spec, batch_size, device, dtype, use_cache) if latency else None
    return Measurement(spec_hash=spec.spec_hash, latency=timed, versions=library_versions(COUNTING_LIBRARIES), **counts)
