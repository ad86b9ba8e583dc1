"""The valid range of every number a user gives a trial, checked in one place for command-line
flags (``--lr``) and study keys (``task.lr``) alike: a number must be finite and in its range."""

from __future__ import annotations

import argparse
import math
from dataclasses import dataclass
from typing import Any, Callable, Mapping

from scaling_lab.errors import ScalingLabError


@dataclass(frozen=True)
class Range:
    """``low``/``high`` bounds (None = unbounded), each closed unless ``*_open``."""

    low: float | None = None
    high: float | None = None
    low_open: bool = False
    high_open: bool = False
    integer: bool = False

    def describe(self) -> str:
        def number(bound: float) -> str:
            return str(int(bound)) if float(bound).is_integer() else f"{bound:g}"

        kind = "an integer" if self.integer else "a finite number"
        if self.low is not None and self.high is not None:
            return f"{kind} in {'(' if self.low_open else '['}{number(self.low)}, {number(self.high)}{')' if self.high_open else ']'}"
        if self.low is not None:
            return f"{kind} {'>' if self.low_open else '>='} {number(self.low)}"
        if self.high is not None:
            return f"{kind} {'<' if self.high_open else '<='} {number(self.high)}"
        return kind

    def contains(self, value: Any) -> bool:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            return False
        if self.integer and not isinstance(value, int):
            return False
        if not math.isfinite(value):
            return False
        if self.low is not None and (value <= self.low if self.low_open else value < self.low):
            return False
        return self.high is None or (value < self.high if self.high_open else value <= self.high)


POSITIVE_INT = Range(1, integer=True)
TASK_RANGES: Mapping[str, Range] = {
    "batch_size": POSITIVE_INT,
    "lr": Range(0, low_open=True),
    "weight_decay": Range(0),
    "warmup_epochs": Range(0),
    "grad_clip": Range(0),  # 0 = off
    "ema": Range(0, 1, high_open=True),  # 0 = off; the official decay is 0.9998
    "backbone_lr_scale": Range(0),  # 1 = the task's lr; 0 = a frozen backbone's updates
}
BUDGET_RANGES: Mapping[str, Range] = {
    "epochs": POSITIVE_INT,
    "eval_every": POSITIVE_INT,
    "max_train_images": POSITIVE_INT,  # None = all images
    "max_val_images": POSITIVE_INT,
}
SEED_RANGE = Range(0, 2**32 - 1, integer=True)  # numpy's seeds


def check_value(where: str, value: Any, valid: Range) -> None:
    """Raise ``ScalingLabError`` naming ``where`` and the value when ``value`` is out of range."""
    if not valid.contains(value):
        raise ScalingLabError(f"{where} {value!r} is not valid; it must be {valid.describe()}")


def check_fields(record: Any, ranges: Mapping[str, Range], where: str) -> None:
    """Check the fields of a dataclass instance that have a range (None means "not set")."""
    for name, valid in ranges.items():
        value = getattr(record, name)
        if value is not None:
            check_value(f"{where} {name}", value, valid)


def flag(valid: Range) -> Callable[[str], float | int]:
    """An argparse ``type=`` for a number flag in ``valid``: argparse names the flag and exits 2."""

    def parse(text: str) -> float | int:
        try:
            value: float | int = int(text) if valid.integer else float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not {'an integer' if valid.integer else 'a number'}") from None
        if not valid.contains(value):
            raise argparse.ArgumentTypeError(f"{text!r} is not valid; it must be {valid.describe()}")
        return value

    parse.__name__ = "integer" if valid.integer else "number"
    return parse
