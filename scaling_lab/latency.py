"""Latency: a model's forward pass timed alone on its device, as the median of repeated runs with
its spread, cached by the counting key plus device, batch size and dtype (``measure_cache``).

Studies call ``measure_latency`` from their driver, never from trials that share a device. A
median its repeats do not support is re-timed, and if still unsupported reported as unstable
(no number).
"""

from __future__ import annotations

import dataclasses
import fcntl
import math
import platform
import statistics
import time
from dataclasses import dataclass
from typing import Any, Callable

import torch

from scaling_lab.errors import ScalingLabError
from scaling_lab.measure_cache import cache_dir, measurement_key, read_cached, write_cached
from scaling_lab.models import build_model
from scaling_lab.spec import Spec

# Latency timing: LATENCY_RUNS timed forwards after LATENCY_WARMUP untimed ones, per attempt. A
# median stands when the interquartile range of its runs is at most MAX_RELATIVE_SPREAD of it;
# otherwise the whole attempt (warm-up included) is repeated, up to LATENCY_ATTEMPTS in all.
LATENCY_WARMUP, LATENCY_RUNS, LATENCY_ATTEMPTS = 3, 10, 3
MAX_RELATIVE_SPREAD = 0.2
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


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
        images = torch.randn(batch, 3, *spec.input_size, device=device).to(memory_format=torch.channels_last)

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
    cached = read_cached(path) if use_cache else None
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
        write_cached(path, timed.to_dict())
    return timed
