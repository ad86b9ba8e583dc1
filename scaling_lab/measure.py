"""Cost of a spec: parameters, FLOPs and activations counted by fvcore, and measured latency.

FLOPs follow the papers' convention: one per multiply-add, convolutions and linear layers
(plus fvcore's own handles for batch norm, pooling and upsampling). The element-wise ops that
feature fusion uses (add, mul, div, softmax, sigmoid, relu) are counted by extra handles and
reported apart as ``flops_elementwise``, so fusion rules differ in cost while ``flops`` stays
comparable with the papers.

Counts are cached on disk by spec hash, library versions and a fingerprint of the source that
builds and counts the model (so edited code never serves stale figures); latencies by the same
key plus device, batch size and dtype.

Latency is a figure of the model alone on its device: ``measure_latency`` times it under a
per-device lock, and studies call it from their driver, never from trials that share a device.
Each timing is the median of repeated forwards after warm-up, kept with its spread; a median its
repeats do not support is re-timed, and if still unsupported reported as unstable (no number).
"""

from __future__ import annotations

import dataclasses
import fcntl
import functools
import ast
import hashlib
import json
import math
import os
import platform
import statistics
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch

from scaling_lab.errors import ScalingLabError
from scaling_lab.files import atomic_write_text
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


# Latency timing: LATENCY_RUNS timed forwards after LATENCY_WARMUP untimed ones, per attempt. A
# median stands when the interquartile range of its runs is at most MAX_RELATIVE_SPREAD of it;
# otherwise the whole attempt (warm-up included) is repeated, up to LATENCY_ATTEMPTS in all.
LATENCY_WARMUP, LATENCY_RUNS, LATENCY_ATTEMPTS = 3, 10, 3
MAX_RELATIVE_SPREAD = 0.2
COUNTING_LIBRARIES = ("scaling-lab", "torch", "fvcore")  # their versions are part of the cache key
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def cache_dir() -> Path:
    return Path(os.environ.get("SCALING_LAB_CACHE", Path.home() / ".cache" / "scaling-lab"))


@dataclass(frozen=True)
class Timing:
    """Repeated timings of one forward pass (ms): the median and its spread, and whether the
    spread supports the median (``stable``); ``attempts`` counts the rounds it took."""

    median_ms: float
    q1_ms: float
    q3_ms: float
    min_ms: float
    max_ms: float
    runs: int
    attempts: int
    stable: bool

    @property
    def relative_spread(self) -> float:
        """Interquartile range over the median."""
        return (self.q3_ms - self.q1_ms) / self.median_ms if self.median_ms > 0 else math.inf

    @property
    def ms(self) -> float | None:
        """The median, or None when its repeats do not support it."""
        return self.median_ms if self.stable else None

    def describe(self) -> str:
        state = "" if self.stable else f" UNSTABLE after {self.attempts} attempts"
        return (
            f"median {self.median_ms:.3g} ms, IQR {self.q1_ms:.3g}-{self.q3_ms:.3g} ms "
            f"({self.relative_spread:.0%} of the median), min {self.min_ms:.3g}, max {self.max_ms:.3g}, {self.runs} runs{state}"
        )


def summarize_timings(timings_ms: list[float], attempts: int = 1, max_relative_spread: float = MAX_RELATIVE_SPREAD) -> Timing:
    """Median, quartiles and range of one attempt's runs; stable when IQR <= max_relative_spread · median."""
    if len(timings_ms) < 2:
        raise ValueError(f"a timing needs at least 2 runs, got {len(timings_ms)}")
    q1, median, q3 = statistics.quantiles(timings_ms, n=4, method="inclusive")
    stable = median > 0 and (q3 - q1) <= max_relative_spread * median
    return Timing(median, q1, q3, min(timings_ms), max(timings_ms), len(timings_ms), attempts, stable)


def time_repeated(
    run_once: Callable[[], Any],
    warmup: int = LATENCY_WARMUP,
    runs: int = LATENCY_RUNS,
    attempts: int = LATENCY_ATTEMPTS,
    max_relative_spread: float = MAX_RELATIVE_SPREAD,
    clock: Callable[[], float] = time.perf_counter,
) -> Timing:
    """Time ``run_once`` (which must wait for its own work, e.g. a CUDA synchronize): warm-up,
    then ``runs`` timed calls; an attempt whose spread does not support its median is repeated,
    and the last attempt is returned (``stable`` False) when none does. ``clock`` is in seconds."""
    for attempt in range(1, attempts + 1):
        for _ in range(warmup):
            run_once()
        timings = []
        for _ in range(runs):
            start = clock()
            run_once()
            timings.append((clock() - start) * 1000)
        timing = summarize_timings(timings, attempt, max_relative_spread)
        if timing.stable:
            return timing
    return timing


@dataclass(frozen=True)
class Latency:
    """Forward latency in eval mode at batch 1 and at ``batch_size`` (the same timing when 1)."""

    device: str
    dtype: str
    batch_size: int
    batch1: Timing
    batch: Timing

    @property
    def stable(self) -> bool:
        return self.batch1.stable and self.batch.stable

    @property
    def batch1_ms(self) -> float | None:
        return self.batch1.ms

    @property
    def batch_ms(self) -> float | None:
        return self.batch.ms

    @property
    def images_per_second(self) -> float | None:
        return 1000.0 * self.batch_size / self.batch.ms if self.batch.ms else None

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "Latency":
        return cls(**{**data, "batch1": Timing(**data["batch1"]), "batch": Timing(**data["batch"])})


@dataclass(frozen=True)
class Measurement:
    spec_hash: str
    resolution: int
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


def counted_sources(root: Path = Path(__file__).parent, entry: str = "measure.py") -> tuple[str, ...]:
    """The package's source files (relative to ``root``) that ``entry`` imports, directly or
    through other package modules, function-level imports included: the code that builds and
    counts a model. Derived from the imports, so a module that moves or is added is covered."""
    package = root.name
    found: set[str] = set()
    pending = [root / entry]
    while pending:
        path = pending.pop()
        relative = path.relative_to(root).as_posix()
        if relative in found:
            continue
        found.add(relative)
        for node in ast.walk(ast.parse(path.read_bytes(), filename=str(path))):
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                if node.level:  # relative: resolved against the importing module's package
                    parts = path.relative_to(root).parent.parts[: len(path.relative_to(root).parent.parts) - node.level + 1]
                    base = ".".join((package, *parts, *([node.module] if node.module else [])))
                else:
                    base = node.module or ""
                names = [base] + [f"{base}.{alias.name}" for alias in node.names]
            else:
                continue
            for name in names:
                pending.extend(_module_files(root, name))
    return tuple(sorted(found))


def _module_files(root: Path, module: str) -> list[Path]:
    """The files that importing ``module`` runs inside the package at ``root`` (each package's
    ``__init__.py`` on the way, then the module); none for modules outside it or attributes."""
    parts = module.split(".")
    if parts[0] != root.name:
        return []
    files, folder = [], root
    for part in parts[1:]:
        if (folder / "__init__.py").is_file():
            files.append(folder / "__init__.py")
        if (folder / part).is_dir():
            folder = folder / part
        elif (folder / f"{part}.py").is_file():
            return files + [folder / f"{part}.py"]
        else:
            return files
    return files + [folder / "__init__.py"] if (folder / "__init__.py").is_file() else files


@functools.lru_cache(maxsize=None)
def source_fingerprint(root: Path = Path(__file__).parent) -> str:
    """Hash of the Python source that builds and counts models (``counted_sources``): part of
    the cache key, since the package version does not change with edits."""
    digest = hashlib.sha256()
    for relative in counted_sources(root):
        digest.update(relative.encode() + b"\0" + (root / relative).read_bytes() + b"\0")
    return digest.hexdigest()[:16]


def measurement_key(spec: Spec) -> str:
    """Cache key of a spec's counts: spec hash, counting source and library versions."""
    versions = library_versions(COUNTING_LIBRARIES)
    return f"{spec.spec_hash}-src{source_fingerprint()}-{'-'.join(f'{k}{v}' for k, v in sorted(versions.items()))}"


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
    uncounted = {op: int(calls) for op, calls in sorted(analysis.unsupported_ops().items())}
    return {"resolution": spec.resolution, **totals, "breakdown": breakdown, "uncounted_ops": uncounted}


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


def time_latency(spec: Spec, batch_size: int = 8, device: str | None = None, dtype: str = "float32") -> Latency:
    """Time the forward pass at batch 1 and at ``batch_size`` (see ``time_repeated``), uncached
    and without the device lock: callers want ``measure_latency``."""
    device = str(resolve_device(device))
    if dtype not in DTYPES:
        raise ScalingLabError(f"latency dtype {dtype!r} is not valid; valid dtypes are {', '.join(DTYPES)}")
    model = build_model(spec)
    if spec.init:  # the spec's weights: values can matter on a CPU (denormals)
        from scaling_lab.models.weights import load_init

        load_init(model, spec.init)
    model = model.eval().to(device, memory_format=torch.channels_last)

    def timing(batch: int) -> Timing:
        images = torch.randn(batch, 3, spec.resolution, spec.resolution, device=device).to(memory_format=torch.channels_last)

        def forward() -> None:
            model(images)
            if device.startswith("cuda"):
                torch.cuda.synchronize(device)

        with torch.inference_mode(), torch.autocast(device_type=device.split(":")[0], dtype=DTYPES[dtype], enabled=dtype != "float32"):
            return time_repeated(forward)

    batch1 = timing(1)
    return Latency(_device_name(device), dtype, batch_size, batch1, batch1 if batch_size == 1 else timing(batch_size))


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
    atomic_write_text(path, json.dumps(data))


def measure_latency(
    spec: Spec, batch_size: int = 1, device: str | None = None, dtype: str = "float32", use_cache: bool = True
) -> Latency:
    """The spec's latency on ``device``, timed alone: cached per counting key, device name, batch
    size and dtype; timed (only stable results are cached) under a lock per device, so two
    timings on one machine never overlap. Call it where nothing else runs on the device (a
    study's driver between trials), never from a trial that shares one."""
    if batch_size < 1:
        raise ScalingLabError(f"latency batch size {batch_size} must be at least 1")
    device = str(resolve_device(device))
    device_name = _device_name(device)
    path = cache_dir() / "latency" / f"{measurement_key(spec)}-{device_name}-b{batch_size}-{dtype}.json".replace("/", "_")
    cached = _read_json(path) if use_cache else None
    if cached is not None:
        try:
            return Latency.from_dict(cached)
        except (TypeError, KeyError):
            pass  # an entry of another format: time again
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path.parent / f".lock-{device_name.replace('/', '_')}", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        timed = time_latency(spec, batch_size, device, dtype)
    if use_cache and timed.stable:
        _write_json(path, timed.to_dict())
    return timed


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
    counts = _read_json(counts_path) if use_cache else None
    if counts is None:
        counts = count(spec)
        if use_cache:
            _write_json(counts_path, counts)
    timed = measure_latency(spec, batch_size, device, dtype, use_cache) if latency else None
    return Measurement(spec_hash=spec.spec_hash, latency=timed, versions=library_versions(COUNTING_LIBRARIES), **counts)
