"""A trial's checkpoint: weights, optimizer, schedule, weight average, RNG states and progress,
written at every epoch end (by one process: rank 0 of a data-parallel trial) and found again by
the same trial when it runs again.

The weights are the bare model's (no ``module.`` prefixes of a data-parallel wrapper), so a
checkpoint loads into ``evaluate --init``, a one-process resume, or a resume with another worker
count at the same global batch: nothing in it depends on the worker count.
"""

from __future__ import annotations

import hashlib
import json
import logging
import random
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from scaling_lab.errors import ScalingLabError
from scaling_lab.files import atomic_write
from scaling_lab.spec import Spec
from scaling_lab.trial import Budget, Task

log = logging.getLogger(__name__)

CHECKPOINT_NAME = "checkpoint.pt"
CHECKPOINT_FORMAT = 1


@dataclass
class Progress:
    """What a checkpoint carries besides the weights and optimizer states."""

    epoch: int = 0  # epochs completed
    curve: list[dict[str, float]] = field(default_factory=list)
    wall_time_s: float = 0.0
    initial_loss: float | None = None  # the first step's, the reference of ``divergence``
    bootstrap: dict[str, Any] = field(default_factory=dict)  # the last validation's replicates over images
    # The training loss and learning rate at each logging step: {"step", "loss", "lr", "time"}
    # (global step, wall time), so that a resumed trial writes its curves again up to here.
    steps: list[dict[str, float]] = field(default_factory=list)


def trial_fingerprint(spec: Spec, task: Task, budget: Budget, seed: int) -> str:
    """Identifies the trial a checkpoint belongs to (resuming another trial's would be wrong)."""
    text = json.dumps({"spec": spec.to_dict(), "task": asdict(task), "budget": asdict(budget), "seed": seed}, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def save_checkpoint(path: Path, state: dict[str, Any]) -> None:
    """Write atomically: a crash mid-write leaves the previous checkpoint intact. Written through
    a Python file, so that a full disk is an ``OSError`` (torch's own file writer reports it as
    "unexpected pos") and ``atomic_write`` says so."""
    path.parent.mkdir(parents=True, exist_ok=True)

    def write(temporary: str) -> None:
        with open(temporary, "wb") as handle:
            torch.save(state, handle)

    atomic_write(path, write)


def load_checkpoint(path: Path, fingerprint: str, notes: list[str]) -> dict[str, Any] | None:
    """The trial's own checkpoint, or None to start afresh. Checkpoints are written atomically,
    so one that cannot be read was damaged by the machine (a disk error, a copy cut short): it
    is moved aside as ``checkpoint.pt.damaged`` and the trial starts afresh, with a note."""
    if not path.exists():
        return None
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # noqa: BLE001 - torch and pickle raise many kinds for a damaged file
        aside = path.with_name(f"{path.name}.damaged")
        path.replace(aside)
        detail = str(error).splitlines()[0] if str(error) else type(error).__name__
        note = f"checkpoint {path} could not be read ({detail}); moved aside as {aside.name}, the trial started afresh"
        log.warning(note)
        notes.append(note)
        return None
    if state.get("format") != CHECKPOINT_FORMAT or state.get("fingerprint") != fingerprint:
        raise ScalingLabError(
            f"checkpoint {path} belongs to another trial (spec, task, budget or seed differ); "
            "use another checkpoint_dir or delete it"
        )
    return state


def rng_state() -> dict[str, Any]:
    kind, keys, position, has_gauss, cached = np.random.get_state()
    return {
        "python": random.getstate(),
        "numpy": (kind, torch.from_numpy(keys.astype(np.int64)), position, has_gauss, cached),
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
    }


def set_rng_state(state: dict[str, Any]) -> None:
    random.setstate((state["python"][0], tuple(state["python"][1]), state["python"][2]))
    kind, keys, position, has_gauss, cached = state["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), position, has_gauss, cached))
    torch.set_rng_state(state["torch"])
    if state["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
