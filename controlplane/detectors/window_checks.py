"""Checks that run when a window closes: drift, safety rate and unpriced traffic.

Each check is a pure function over the window's feature rows and returns finding specs; the sink
stores them in the same transaction as the window statistics.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Sequence

import pandas as pd
from scipy.stats import binomtest

from controlplane.detectors.drift import (
    CATEGORICAL_FEATURES,
    NUMERIC_FEATURES,
    DriftResult,
    DriftSettings,
    check_drift,
)

DRIFT_COLUMNS = NUMERIC_FEATURES + CATEGORICAL_FEATURES


@dataclass(frozen=True)
class FindingSpec:
    """A finding before it is stored."""

    kind: str
    subject: str
    severity: str
    summary: str
    sample_size: int
    test: str | None
    score: float | None
    threshold: float | None
    details: dict[str, Any] = field(default_factory=dict)


def drift_frame(rows: Sequence[dict[str, Any]]) -> pd.DataFrame:
    """Return the drift columns of feature rows as a frame (missing values as NaN or None)."""
    frame = pd.DataFrame.from_records(list(rows), columns=list(DRIFT_COLUMNS))
    for column in NUMERIC_FEATURES:
        frame[column] = pd.to_numeric(frame[column], errors="coerce")
    return frame


def reference_rows(rows: Sequence[dict[str, Any]], max_rows: int) -> list[dict[str, Any]]:
    """Keep the columns a reference needs, at most `max_rows` rows spread evenly over the window."""
    keep = DRIFT_COLUMNS + ("flagged",)
    step = max(1, len(rows) // max_rows)
    return [{column: row.get(column) for column in keep} for row in rows[::step][:max_rows]]


def check_window_drift(
    reference: Sequence[dict[str, Any]], current: Sequence[dict[str, Any]], settings: DriftSettings
) -> tuple[DriftResult, list[FindingSpec]]:
    """Compare a window with the reference; a drifted window gives one finding naming its columns."""
    result = check_drift(drift_frame(reference), drift_frame(current), settings)
    if result.status != "drifted":
        return result, []
    drifted = [column.column for column in result.columns if column.status == "drifted"]
    finding = FindingSpec(
        kind="drift",
        subject="features",
        severity="warning",
        summary=f"{len(drifted)} of {_evaluated(result)} features drifted: {', '.join(drifted)}",
        sample_size=len(current),
        test="share of drifted columns",
        score=result.drift_share,
        threshold=settings.drift_share,
        details=result.to_json(),
    )
    return result, [finding]


def _evaluated(result: DriftResult) -> int:
    return sum(1 for column in result.columns if column.status in ("ok", "drifted"))


def check_safety_rate(
    reference: Sequence[dict[str, Any]], current: Sequence[dict[str, Any]], alpha: float = 0.001, min_flagged: int = 5
) -> list[FindingSpec]:
    """Flag a window whose share of flagged events is significantly above the reference share.

    A one-sided exact binomial test against the reference rate (with one pseudo-count so that a
    clean reference does not make a single flag significant).
    """
    flagged = sum(1 for row in current if row.get("flagged"))
    if not current or flagged < min_flagged:
        return []
    ref_flagged = sum(1 for row in reference if row.get("flagged"))
    base_rate = (ref_flagged + 1) / (len(reference) + 2)
    test = binomtest(flagged, len(current), base_rate, alternative="greater")
    if test.pvalue >= alpha:
        return []
    rate = flagged / len(current)
    return [
        FindingSpec(
            kind="safety",
            subject="flagged_rate",
            severity="critical" if rate >= 0.2 else "warning",
            summary=f"{flagged} of {len(current)} events flagged ({rate:.1%}) against {base_rate:.1%} in the reference",
            sample_size=len(current),
            test="binomial test, one-sided",
            score=float(test.pvalue),
            threshold=alpha,
            details={
                "flagged": flagged,
                "rate": rate,
                "reference_rate": base_rate,
                "pii_events": sum(1 for row in current if row.get("pii_count")),
                "toxic_events": sum(1 for row in current if row.get("toxic")),
            },
        )
    ]


def check_unpriced(current: Sequence[dict[str, Any]], models: Sequence[str]) -> list[FindingSpec]:
    """Report events whose cost is unknown (unpriced model or missing usage), never as $0."""
    unpriced = sum(1 for row in current if row.get("cost_usd") is None)
    if not unpriced:
        return []
    return [
        FindingSpec(
            kind="cost",
            subject="unknown_cost",
            severity="warning",
            summary=f"cost unknown for {unpriced} of {len(current)} events of {', '.join(sorted(set(models)))}",
            sample_size=len(current),
            test=None,
            score=float(unpriced),
            threshold=None,
            details={
                "unpriced_events": unpriced,
                "missing_usage_events": sum(
                    1 for row in current if row.get("input_tokens") is None or row.get("output_tokens") is None
                ),
            },
        )
    ]
