"""A trial's bootstrap replicates over its validation images, as the results table keeps them
(``schema.BOOTSTRAP_COLUMN``, written by ``scaling_lab.train.bootstrap``): read per configuration
and combined, for the paired image bootstrap of two one-seed trials (``scaling_lab.stats``)."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Sequence

import numpy as np
import pandas as pd

from scaling_lab.schema import BOOTSTRAP_COLUMN


@dataclass(frozen=True)
class ImageReplicates:
    """One trial's bootstrap replicates of a metric over its validation images, and the
    fingerprint of their resampling (equal fingerprints: the same image weights per replicate)."""

    resampling: str
    values: np.ndarray


def image_replicates(trials: pd.DataFrame, metric: str) -> ImageReplicates | None:
    """The bootstrap replicates of a one-trial configuration's ``metric``, if its row kept them."""
    if len(trials) != 1 or BOOTSTRAP_COLUMN not in trials.columns:
        return None
    text = trials[BOOTSTRAP_COLUMN].iloc[0]
    try:
        kept = json.loads(text) if isinstance(text, str) and text else {}
    except json.JSONDecodeError:
        return None
    values = kept.get(metric) if isinstance(kept, dict) else None
    if not values or not kept.get("resampling"):
        return None
    return ImageReplicates(str(kept["resampling"]), np.asarray(values, dtype=float))


def combine_images(parts: Sequence[tuple[ImageReplicates | None, float]]) -> ImageReplicates | None:
    """The weighted sum of one-trial configurations' replicates drawn on the same images, else None."""
    if any(found is None for found, _ in parts) or len({found.resampling for found, _ in parts}) != 1:
        return None
    return ImageReplicates(parts[0][0].resampling, sum(found.values * weight for found, weight in parts))
