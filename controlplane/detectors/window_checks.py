"""Checks that run when a window closes: its profile, drift against the reference, traffic, safety rate, cost.

Each check is a pure function over the window's feature rows or profiles that returns finding
specs. The sink stores them in the same transaction as the window statistics.
"""

from __future__ import annotations

import logging
import math
import time
from collections import Counter
from dataclasses import dataclass, field
from datetime import datetime
from typing import TYPE_CHECKING, Any, Mapping, Sequence

import numpy as np
from scipy.stats import binomtest, poisson

from controlplane.detectors.drift import (
    CATEGORICAL,
    CATEGORICAL_FEATURES,
    NUMERIC_FEATURES,
    ColumnProfile,
    DriftResult,
    DriftSettings,
    compare_profiles,
    profile_column,
    profile_rows,
)
from controlplane.detectors.language import detect_languages
from controlplane.detectors.text_drift import (
    Encoder,
    TextDriftResult,
    TextDriftSettings,
    TextProfile,
    check_text_drift,
    embed_sample,
    sample_rows,
    sample_texts,
    text_profile,
)

if TYPE_CHECKING:
    from controlplane.settings import Settings

logger = logging.getLogger(__name__)

LANGUAGE_COLUMN = "prompt_language"
PROFILE_VERSION = 1


@dataclass(frozen=True)
class FindingSpec:
    """A finding before it is stored; without a window_start it belongs to the window being closed."""

    kind: str
    subject: str
    severity: str
    summary: str
    sample_size: int
    test: str | None
    score: float | None
    threshold: float | None
    details: dict[str, Any] = field(default_factory=dict)
    window_start: datetime | None = None
    window_end: datetime | None = None
    app: str | None = None  # "*" for a finding about every app, such as the budget; else the window's
    model: str | None = None


@dataclass(frozen=True)
class CheckSettings:
    """Settings of the checks that run when a window closes."""

    drift: DriftSettings = DriftSettings()
    text: TextDriftSettings = TextDriftSettings()
    text_drift: bool = True
    language_drift: bool = True
    traffic_drop_ratio: float = 0.2
    """Share of the reference's event count below which a window's traffic dropped."""
    traffic_alpha: float = 0.001
    """Poisson p-value below which a low count or a run of empty windows is reported."""

    @classmethod
    def from_settings(cls, settings: Settings) -> CheckSettings:
        """Build the check settings from the process settings."""
        drift = DriftSettings(
            min_rows=settings.drift_min_rows, threshold=settings.drift_threshold, drift_share=settings.drift_share,
            rule=settings.drift_rule, window_alpha=settings.drift_window_alpha, sketch_size=settings.drift_sketch_size,
        )
        text = TextDriftSettings(
            sample_size=settings.text_sample_size, min_texts=settings.text_min_texts, alpha=settings.text_drift_alpha
        )
        # Without stored texts (text_sample_chars = 0) there is nothing to embed or to detect the language of.
        keeps_text = settings.text_sample_chars > 0
        return cls(
            drift=drift, text=text, text_drift=settings.text_drift and keeps_text,
            language_drift=settings.language_drift and keeps_text,
            traffic_drop_ratio=settings.traffic_drop_ratio, traffic_alpha=settings.traffic_alpha,
        )


@dataclass(frozen=True)
class Profile:
    """The statistics of one window that the checks compare, and that a reference keeps."""

    event_count: int
    flagged_count: int
    model_versions: dict[str, int]
    """Events per model version, "" for events without one."""
    columns: dict[str, ColumnProfile]
    text: dict[str, TextProfile]

    @property
    def model_version(self) -> str:
        """The most frequent model version ("" for none), whose reference the window is compared with."""
        # NOTE: a window that mixes versions (a canary) is compared whole with that one reference,
        # so the minority version's traffic counts as drift of the majority's.
        if not self.model_versions:
            return ""
        return max(sorted(self.model_versions), key=lambda version: self.model_versions[version])

    def to_json(self) -> dict[str, Any]:
        """Convert the profile to a dict of JSON types."""
        return {
            "version": PROFILE_VERSION, "event_count": self.event_count, "flagged_count": self.flagged_count,
            "model_versions": dict(self.model_versions),
            "columns": {name: column.to_json() for name, column in self.columns.items()},
            "text": {name: text.to_json() for name, text in self.text.items()},
        }

    @classmethod
    def from_json(cls, document: Mapping[str, Any]) -> Profile:
        """Read a profile written by `to_json`."""
        return cls(
            event_count=int(document["event_count"]), flagged_count=int(document["flagged_count"]),
            model_versions={str(key): int(count) for key, count in document["model_versions"].items()},
            columns={name: ColumnProfile.from_json(column) for name, column in document["columns"].items()},
            text={name: TextProfile.from_json(text) for name, text in document["text"].items()},
        )


def profile_window(
    rows: Sequence[Mapping[str, Any]], settings: CheckSettings, encoder: Encoder | None
) -> tuple[Profile, dict[str, np.ndarray]]:
    """Profile a window's feature rows; also return the embedded text sample that the text check reads."""
    started = time.perf_counter()
    columns = profile_rows(rows, NUMERIC_FEATURES, CATEGORICAL_FEATURES, settings.drift.sketch_size)
    sample = sample_rows(rows, settings.text.sample_size) if settings.text_drift or settings.language_drift else []
    prompts = sample_texts(sample, "prompt")
    if settings.language_drift and prompts:
        columns[LANGUAGE_COLUMN] = profile_column(detect_languages(prompts), CATEGORICAL, LANGUAGE_COLUMN)
    vectors: dict[str, np.ndarray] = {}
    # A sample too small to test is not embedded: it could neither be tested nor serve as a reference.
    if settings.text_drift and encoder is not None and len(sample) >= settings.text.min_texts:
        vectors = embed_sample(sample, encoder)
    text = {name: profile for name, embedded in vectors.items() if (profile := text_profile(embedded)) is not None}
    versions = Counter("" if row.get("model_version") is None else str(row["model_version"]) for row in rows)
    profile = Profile(len(rows), sum(1 for row in rows if row.get("flagged")), dict(versions), columns, text)
    logger.debug(
        "window profiled: events=%d sampled=%d embedded=%d elapsed_ms=%.1f",
        len(rows), len(sample), sum(len(v) for v in vectors.values()), (time.perf_counter() - started) * 1000,
    )
    return profile, vectors


@dataclass(frozen=True)
class WindowDrift:
    """Feature and text drift of one window against its reference."""

    features: DriftResult
    text: TextDriftResult | None

    @property
    def status(self) -> str:
        """"drifted" when any check drifted, "ok" when one was tested, else the feature check's status."""
        statuses = [self.features.status, self.features.missing_status]
        if self.text is not None:
            statuses.append(self.text.status)
        if "drifted" in statuses:
            return "drifted"
        return "ok" if "ok" in statuses else self.features.status

    def to_json(self) -> dict[str, Any]:
        """Convert to the `details["drift"]` document of a window: feature columns, missing values, text."""
        document = self.features.to_json()
        document["features_status"] = document["status"]
        document["status"] = self.status
        document["text"] = self.text.to_json() if self.text is not None else None
        return document


def check_window(
    reference: Profile, current: Profile, vectors: Mapping[str, np.ndarray], settings: CheckSettings
) -> tuple[WindowDrift, list[FindingSpec]]:
    """Compare a window with its reference; each drifted check gives one finding."""
    features = compare_profiles(reference.columns, current.columns, settings.drift)
    text = check_text_drift(reference.text, vectors, settings.text) if settings.text_drift else None
    drift = WindowDrift(features, text)
    findings = [
        spec
        for spec in (
            _features_finding(features, current.event_count, settings.drift),
            _missing_finding(features, current.event_count),
            _text_finding(text) if text is not None else None,
        )
        if spec is not None
    ]
    return drift, findings


def _features_finding(result: DriftResult, events: int, settings: DriftSettings) -> FindingSpec | None:
    if result.status != "drifted":
        return None
    drifted = [c for c in result.columns if c.status == "drifted"]
    tested = sum(1 for c in result.columns if c.status in ("ok", "drifted"))
    described = ", ".join(f"{c.column} ({c.test} {c.score:.2g})" for c in drifted)
    new = {c.column: list(c.new_categories) for c in result.columns if c.new_categories}
    summary = f"{len(drifted)} of {tested} features drifted: {described}"
    if new:
        summary += "; values absent from the reference: " + "; ".join(f"{k} {', '.join(v)}" for k, v in new.items())
    if settings.rule == "share":
        test, score, threshold = "share of drifted columns", result.drift_share, settings.drift_share
    else:
        test, score, threshold = f"Bonferroni over {tested} Evidently tests", min(c.score for c in drifted), drifted[0].threshold
    details = {**result.to_json(), "new_categories": new}
    return FindingSpec("drift", "features", "warning", summary, events, test, score, threshold, details)


def _missing_finding(result: DriftResult, events: int) -> FindingSpec | None:
    if result.missing_status != "drifted":
        return None
    drifted = [c for c in result.missing_values if c.status == "drifted"]
    described = ", ".join(f"{c.column} {c.reference_share:.0%} to {c.current_share:.0%}" for c in drifted)
    details = {"missing_values": result.to_json()["missing_values"]}
    return FindingSpec(
        "drift", "missing_values", "warning", f"share of missing values changed: {described}", events,
        f"Bonferroni over {len(result.missing_values)} Z-tests", min(c.score for c in drifted), drifted[0].threshold, details,
    )


def _text_finding(result: TextDriftResult) -> FindingSpec | None:
    if result.status != "drifted":
        return None
    parts = []
    for drift in result.fields:
        if drift.status == "drifted":
            parts.append(
                f"{drift.field}s: {drift.novel_share_current:.0%} novel against {drift.novel_share_reference:.0%} "
                f"in the reference (p {drift.novelty_p:.2g}), mean distance p {drift.distance_p:.2g}"
            )
    tested = [f for f in result.fields if f.status in ("ok", "drifted")]
    return FindingSpec(
        "drift", "text", "warning", "text drifted: " + "; ".join(parts), max(f.n_current for f in tested),
        f"{tested[0].test}, Bonferroni over {2 * len(tested)} tests", result.min_score, result.threshold, result.to_json(),
    )


def check_traffic(expected: int, count: int, settings: CheckSettings) -> list[FindingSpec]:
    """Report a window whose event count fell below the reference's by ratio and by a Poisson test."""
    # NOTE: `expected` is the event count of the one reference window, so traffic with a daily
    # cycle deeper than traffic_drop_ratio reports drops every night.
    if expected <= 0 or count >= settings.traffic_drop_ratio * expected:
        return []
    p_value = float(poisson.cdf(count, expected))
    if p_value >= settings.traffic_alpha:
        return []
    return [
        FindingSpec(
            "traffic", "traffic_drop", "warning",
            f"{count} events against {expected} in the reference window ({count / expected:.0%})", count,
            "Poisson lower tail", p_value, settings.traffic_alpha,
            {"event_count": count, "reference_event_count": expected, "ratio": count / expected},
        )
    ]


def check_gap(
    expected: int | None, missing: int, first_start: datetime, end: datetime, recorded: int, settings: CheckSettings
) -> FindingSpec | None:
    """Report a run of `missing` empty windows when the reference makes so many empty windows unlikely."""
    if not expected or missing <= 0:
        return None
    # Probability of no event at all in `missing` windows at the reference's Poisson rate.
    p_value = math.exp(-expected * missing)
    if p_value >= settings.traffic_alpha:
        return None
    return FindingSpec(
        "traffic", "traffic_drop", "critical",
        f"no events in {missing} windows from {first_start.isoformat()} to {end.isoformat()}, "
        f"against {expected} per window in the reference",
        0, "Poisson probability of empty windows", p_value, settings.traffic_alpha,
        {"missing_windows": missing, "recorded_windows": recorded, "reference_event_count": expected},
        window_start=first_start, window_end=end,
    )


def check_safety_rate(reference: Profile, current: Sequence[Mapping[str, Any]], alpha: float = 0.001, min_flagged: int = 5) -> list[FindingSpec]:
    """Flag a window whose share of flagged events is significantly above the reference share.

    A one-sided exact binomial test against the reference rate (with one pseudo-count so that a
    clean reference does not make a single flag significant).
    """
    flagged = sum(1 for row in current if row.get("flagged"))
    if not current or flagged < min_flagged:
        return []
    base_rate = (reference.flagged_count + 1) / (reference.event_count + 2)
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


def check_unpriced(current: Sequence[Mapping[str, Any]], models: Sequence[str]) -> list[FindingSpec]:
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
