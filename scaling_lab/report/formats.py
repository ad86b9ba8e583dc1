"""How the report's tables print values: missing values as a dash, accuracy in percent."""

from __future__ import annotations

from typing import Any

import pandas as pd

from scaling_lab.report.figures import scale
from scaling_lab.schema import interval_columns


def text(value: Any) -> str:
    return "–" if value is None or (isinstance(value, float) and pd.isna(value)) else str(value)


def number(digits: int = 3) -> Any:
    return lambda value: "–" if pd.isna(value) else f"{value:.{digits}g}"


def ratio(value: float) -> str:
    return "–" if pd.isna(value) else f"{value:.2f}x"


def percent(metric: str) -> Any:
    factor = scale(metric)
    return lambda value: "–" if pd.isna(value) else f"{value * factor:.2f}"


def mean_std(frame: pd.DataFrame, metric: str) -> pd.Series:
    factor = scale(metric)
    std = frame.get(metric + "_std", pd.Series(float("nan"), index=frame.index))
    return pd.Series(
        [f"{m * factor:.2f}" + (f" ± {s * factor:.2f}" if pd.notna(s) else "") if pd.notna(m) else "–" for m, s in zip(frame[metric], std)],
        index=frame.index,
    )


def interval(metric: str) -> Any:
    """The 95 % interval columns of ``metric`` as ``[low, high]`` in display units."""
    factor = scale(metric)
    low, high = interval_columns(metric)
    return lambda row: "–" if pd.isna(row[low]) else f"[{row[low] * factor:.2f}, {row[high] * factor:.2f}]"
