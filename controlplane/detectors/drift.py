"""Feature drift of one window against a reference, compared through precomputed column profiles.

A profile keeps, per feature column, only what the tests need. A numeric column keeps a sorted
sample of at most `sketch_size` values (its quantiles when it has more), and a categorical
column keeps its counts. Every column also keeps its count of missing values. A reference is
the profile of one window, computed once, so a check only profiles the new window.

The tests are those of Evidently's stattest registry (Evidently 0.7.23), called on arrays
rather than through a Report, which would also build plotly charts. Both sides are capped at
`sketch_size` values (1000 by default) because Evidently picks a p-value test (K-S, Z-test,
chi-square) for up to 1000 reference values and a distance above. The cap therefore keeps
`threshold` a p-value. A larger window is summarized by its quantiles or by its counts
scaled to the cap, so every test has the power of a sample of at most 1000 rows.

Evidently's chi-square test is a goodness-of-fit test against the reference shares, so a
single event of a category that the reference sample lacks gives p = 0. Wherever Evidently
would pick it, this module runs a chi-square test of homogeneity instead, which treats both
sides as samples. It is registered in Evidently's registry as "chisquare_homogeneity".
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import asdict, dataclass, field
from typing import Any, Literal, Mapping, Sequence

import numpy as np
import pandas as pd
from evidently.legacy.calculations.stattests.registry import StatTest, get_stattest, register_stattest
from evidently.legacy.core import ColumnType
from scipy.stats import chi2_contingency

from controlplane.errors import ConfigurationError, DetectorError

logger = logging.getLogger(__name__)

NUMERIC_FEATURES = ("prompt_chars", "completion_chars", "input_tokens", "output_tokens", "latency_ms")
CATEGORICAL_FEATURES = ("finish_reason", "route", "status")
NUMERIC = "numeric"
CATEGORICAL = "categorical"


@dataclass(frozen=True)
class DriftSettings:
    """Settings of the feature drift check."""

    min_rows: int = 50
    """Minimum non-missing values on each side for a column to be tested, below which it is "insufficient_data"."""
    threshold: float = 0.05
    """p-value below which one column has drifted under the "share" rule."""
    drift_share: float = 0.5
    """Share of tested columns that must drift for the window to drift under the "share" rule."""
    rule: Literal["bonferroni", "share"] = "bonferroni"
    """"bonferroni": the window drifts when one column's p-value is below window_alpha / tested columns."""
    window_alpha: float = 0.01
    """Bound on the false-alarm rate of one window under the "bonferroni" rule."""
    sketch_size: int = 1000
    """Values kept per numeric column in a profile, and values compared per side in a test."""

    def __post_init__(self) -> None:
        if self.min_rows < 2:
            raise ConfigurationError(f"invalid min_rows {self.min_rows}: a statistical test needs at least 2 rows")
        if not 0 < self.threshold < 1:
            raise ConfigurationError(f"invalid threshold {self.threshold}: set a p-value between 0 and 1, e.g. 0.05")
        if not 0 < self.drift_share <= 1:
            raise ConfigurationError(f"invalid drift_share {self.drift_share}: set a share in (0, 1], e.g. 0.5")
        if self.rule not in ("bonferroni", "share"):
            raise ConfigurationError(f"invalid drift rule {self.rule!r}: use 'bonferroni' or 'share'")
        if not 0 < self.window_alpha < 1:
            raise ConfigurationError(f"invalid window_alpha {self.window_alpha}: set a probability between 0 and 1, e.g. 0.01")
        if not 10 <= self.sketch_size <= 1000:
            # Above 1000 values Evidently would choose distances, whose scores are not p-values.
            raise ConfigurationError(f"invalid sketch_size {self.sketch_size}: set between 10 and 1000 values")


@dataclass(frozen=True)
class ColumnProfile:
    """Statistics of one column of one window, as much as a drift test needs."""

    kind: str
    """"numeric" or "categorical"."""
    rows: int
    missing: int
    values: tuple[float, ...] = ()
    """Numeric: the sorted non-missing values, or `sketch_size` of their quantiles."""
    counts: dict[str, int] = field(default_factory=dict)
    """Categorical: the count of each value."""

    @property
    def present(self) -> int:
        """Number of non-missing values."""
        return self.rows - self.missing

    def to_json(self) -> dict[str, Any]:
        """Convert the profile to a dict of JSON types."""
        document: dict[str, Any] = {"kind": self.kind, "rows": self.rows, "missing": self.missing}
        if self.kind == NUMERIC:
            document["values"] = list(self.values)
        else:
            document["counts"] = dict(self.counts)
        return document

    @classmethod
    def from_json(cls, document: Mapping[str, Any]) -> ColumnProfile:
        """Read a profile written by `to_json`."""
        return cls(
            kind=document["kind"], rows=int(document["rows"]), missing=int(document["missing"]),
            values=tuple(float(value) for value in document.get("values", ())),
            counts={str(key): int(count) for key, count in document.get("counts", {}).items()},
        )


def profile_column(values: Sequence[Any], kind: str, name: str, sketch_size: int = 1000) -> ColumnProfile:
    """Profile one column's values; None, NaN and infinities count as missing."""
    if kind == NUMERIC:
        try:
            array = np.asarray(values, dtype=float)
        except (TypeError, ValueError) as exc:
            raise DetectorError(f"invalid column {name!r}: not numeric ({exc}). Pass numbers, or None when unknown") from exc
        present = np.sort(array[np.isfinite(array)])
        return ColumnProfile(NUMERIC, len(array), len(array) - len(present), tuple(_sketch(present, sketch_size).tolist()))
    if kind != CATEGORICAL:
        raise ConfigurationError(f"invalid kind {kind!r} of column {name!r}: use 'numeric' or 'categorical'")
    counts: dict[str, int] = {}
    missing = 0
    for value in values:
        if value is None or (isinstance(value, float) and math.isnan(value)):
            missing += 1
        else:
            # Mixed types such as 200 and "200" would otherwise count as two categories.
            key = str(value)
            counts[key] = counts.get(key, 0) + 1
    return ColumnProfile(CATEGORICAL, len(values), missing, counts=dict(sorted(counts.items())))


def _sketch(ordered: np.ndarray, size: int) -> np.ndarray:
    if len(ordered) <= size:
        return ordered
    # Quantiles at the midpoints of `size` equal slices, taken as observed values so that
    # integer columns stay integers and ties stay ties.
    return np.quantile(ordered, (np.arange(size) + 0.5) / size, method="inverted_cdf")


def profile_rows(
    rows: Sequence[Mapping[str, Any]],
    numeric: Sequence[str] = NUMERIC_FEATURES,
    categorical: Sequence[str] = CATEGORICAL_FEATURES,
    sketch_size: int = 1000,
) -> dict[str, ColumnProfile]:
    """Profile the feature columns of feature rows; a column absent from a row counts as missing there."""
    columns = {name: [row.get(name) for row in rows] for name in (*numeric, *categorical)}
    return _profile_columns(columns, numeric, categorical, sketch_size)


def profile_frame(
    frame: pd.DataFrame,
    numeric: Sequence[str] = NUMERIC_FEATURES,
    categorical: Sequence[str] = CATEGORICAL_FEATURES,
    sketch_size: int = 1000,
) -> dict[str, ColumnProfile]:
    """Profile the feature columns present in `frame`; absent columns are left out."""
    columns = {
        name: frame[name].astype(object).tolist() if name in numeric else frame[name].tolist()
        for name in (*numeric, *categorical)
        if name in frame
    }
    return _profile_columns(columns, numeric, categorical, sketch_size)


def _profile_columns(
    columns: Mapping[str, list[Any]], numeric: Sequence[str], categorical: Sequence[str], sketch_size: int
) -> dict[str, ColumnProfile]:
    _check_kinds(numeric, categorical)
    return {
        name: profile_column(values, NUMERIC if name in numeric else CATEGORICAL, name, sketch_size)
        for name, values in columns.items()
    }


def _check_kinds(numeric: Sequence[str], categorical: Sequence[str]) -> None:
    overlap = set(numeric) & set(categorical)
    if overlap:
        raise ConfigurationError(f"columns {sorted(overlap)} are listed as numeric and as categorical: list each once")


@dataclass(frozen=True)
class ColumnDrift:
    """Drift of one column: "ok", "drifted", "insufficient_data", or "no_data" (column absent or no reference)."""

    column: str
    status: str
    test: str | None
    """Test name as Evidently's registry displays it (e.g. "K-S p_value"), or None when the column was not tested."""
    score: float | None
    """p-value of the test."""
    threshold: float | None
    """p-value below which this column counts as drifted, after the window rule's correction."""
    n_reference: int
    n_current: int
    new_categories: tuple[str, ...] = ()
    """Categories of the current window that the reference lacks."""
    reference_share: float | None = None
    """Missing-value checks: share of missing values in the reference."""
    current_share: float | None = None
    """Missing-value checks: share of missing values in the current window."""


@dataclass(frozen=True)
class DriftResult:
    """Feature drift of one window: "ok", "drifted", "insufficient_data" or "no_reference"."""

    status: str
    drift_share: float | None
    """Share of tested columns that drifted; None when no column was tested."""
    columns: tuple[ColumnDrift, ...]
    missing_values: tuple[ColumnDrift, ...] = ()
    """One check per column of the change in its share of missing values."""
    missing_status: str = "insufficient_data"
    rule: str = "bonferroni"

    @property
    def drifted_columns(self) -> tuple[str, ...]:
        """Names of the columns whose values drifted."""
        return tuple(c.column for c in self.columns if c.status == "drifted")

    @property
    def missing_drifted_columns(self) -> tuple[str, ...]:
        """Names of the columns whose share of missing values changed."""
        return tuple(c.column for c in self.missing_values if c.status == "drifted")

    def to_json(self) -> dict[str, Any]:
        """Convert the result to a dict of JSON types, with a non-finite score as None."""
        return {
            "status": self.status, "drift_share": self.drift_share, "rule": self.rule,
            "columns": [_column_json(column) for column in self.columns],
            "missing_status": self.missing_status,
            "missing_values": [_column_json(column) for column in self.missing_values],
        }


def _column_json(column: ColumnDrift) -> dict[str, Any]:
    row = asdict(column)
    row["new_categories"] = list(column.new_categories)
    if row["score"] is not None and not math.isfinite(row["score"]):
        row["score"] = None
    return row


def compare_profiles(
    reference: Mapping[str, ColumnProfile] | None, current: Mapping[str, ColumnProfile], settings: DriftSettings = DriftSettings()
) -> DriftResult:
    """Test each column of `current` for drift of its values and of its missing share against `reference`."""
    started = time.perf_counter()
    names = list(dict.fromkeys([*(reference or {}), *current]))
    if not reference:
        columns = tuple(ColumnDrift(name, "no_data", None, None, None, 0, current[name].present) for name in names)
        return DriftResult("no_reference", None, columns, rule=settings.rule)

    testable = [name for name in names if _enough(reference.get(name), current.get(name), settings.min_rows, "present")]
    threshold = _column_threshold(len(testable), settings)
    columns = tuple(
        _value_drift(name, reference.get(name), current.get(name), threshold if name in testable else None, settings)
        for name in names
    )
    with_rows = [name for name in names if _enough(reference.get(name), current.get(name), settings.min_rows, "rows")]
    missing_threshold = _column_threshold(len(with_rows), settings)
    missing = tuple(
        _missing_drift(name, reference[name], current[name], missing_threshold, settings.sketch_size) for name in with_rows
    )

    status, share = _decide(columns, settings)
    missing_status, _ = _decide(missing, settings)
    result = DriftResult(status, share, columns, missing, missing_status, settings.rule)
    logger.debug(
        "feature drift checked: status=%s share=%s missing_status=%s tested=%d/%d elapsed_ms=%.1f",
        status, share, missing_status, len(testable), len(names), (time.perf_counter() - started) * 1000,
    )
    return result


def _enough(reference: ColumnProfile | None, current: ColumnProfile | None, min_rows: int, what: str) -> bool:
    if reference is None or current is None or reference.kind != current.kind:
        return False
    return min(getattr(reference, what), getattr(current, what)) >= min_rows


def _column_threshold(tested: int, settings: DriftSettings) -> float:
    if settings.rule == "share":
        return settings.threshold
    return settings.window_alpha / max(tested, 1)


def _decide(columns: Sequence[ColumnDrift], settings: DriftSettings) -> tuple[str, float | None]:
    tested = [c for c in columns if c.status in ("ok", "drifted")]
    if not tested:
        return "insufficient_data", None
    share = sum(c.status == "drifted" for c in tested) / len(tested)
    if settings.rule == "share":
        return ("drifted" if share >= settings.drift_share else "ok"), share
    return ("drifted" if share > 0 else "ok"), share


def _value_drift(
    name: str, reference: ColumnProfile | None, current: ColumnProfile | None, threshold: float | None, settings: DriftSettings
) -> ColumnDrift:
    n_ref = reference.present if reference else 0
    n_cur = current.present if current else 0
    if reference is None or current is None:
        return ColumnDrift(name, "no_data", None, None, None, n_ref, n_cur)
    new = tuple(sorted(set(current.counts) - set(reference.counts)))
    if threshold is None:
        return ColumnDrift(name, "insufficient_data", None, None, None, n_ref, n_cur, new)
    column_type = ColumnType.Numerical if reference.kind == NUMERIC else ColumnType.Categorical
    ref_values = _test_values(reference, settings.sketch_size)
    cur_values = _test_values(current, settings.sketch_size)
    test, score = run_stattest(ref_values, cur_values, column_type, threshold, name)
    status = "drifted" if score < threshold else "ok"
    return ColumnDrift(name, status, test, score, threshold, n_ref, n_cur, new)


def _missing_drift(name: str, reference: ColumnProfile, current: ColumnProfile, threshold: float, cap: int) -> ColumnDrift:
    ref_values = _expand({"missing": reference.missing, "present": reference.present}, cap)
    cur_values = _expand({"missing": current.missing, "present": current.present}, cap)
    test, score = run_stattest(ref_values, cur_values, ColumnType.Categorical, threshold, name, stattest="z")
    status = "drifted" if score < threshold else "ok"
    return ColumnDrift(
        name, status, test, score, threshold, reference.rows, current.rows,
        reference_share=reference.missing / reference.rows, current_share=current.missing / current.rows,
    )


def _test_values(profile: ColumnProfile, cap: int) -> pd.Series:
    if profile.kind == NUMERIC:
        values = np.asarray(profile.values, dtype=float)
        return pd.Series(_sketch(values, cap))
    return _expand(profile.counts, cap)


def _expand(counts: Mapping[str, int], cap: int) -> pd.Series:
    """Repeat each category by its count, scaled down to `cap` values in total when there are more."""
    keys = [key for key, count in counts.items() if count > 0]
    sizes = np.array([counts[key] for key in keys], dtype=float)
    if sizes.sum() > cap:
        # Largest remainders after flooring, and at least one value per category so that
        # scaling never hides a category from the test.
        exact = sizes * cap / sizes.sum()
        scaled = np.maximum(np.floor(exact), 1)
        spare = int(cap - scaled.sum())
        if spare > 0:
            scaled[np.argsort(scaled - exact)[:spare]] += 1
        sizes = scaled
    return pd.Series(np.repeat(np.array(keys, dtype=object), sizes.astype(int)), dtype=object)


def run_stattest(
    reference: pd.Series, current: pd.Series, column_type: ColumnType, threshold: float, name: str, stattest: str | None = None
) -> tuple[str, float]:
    """Run Evidently's test for the column type (or `stattest` by name); return its display name and p-value."""
    test: StatTest = get_stattest(reference, current, column_type, stattest)
    if test.name == "chisquare":
        test = chi_square_homogeneity
    try:
        result = test(reference, current, column_type, threshold)
    except (ValueError, TypeError, ZeroDivisionError) as exc:
        raise DetectorError(f"Evidently's {test.display_name} test failed on column {name!r}: {exc}") from exc
    score = float(result.drift_score)
    return test.display_name, (1.0 if math.isnan(score) else score)


def _chi_square_homogeneity(
    reference: pd.Series, current: pd.Series, feature_type: ColumnType, threshold: float
) -> tuple[float, bool]:
    ref_counts = reference.value_counts()
    cur_counts = current.value_counts()
    keys = sorted(set(ref_counts.index) | set(cur_counts.index), key=str)
    if len(keys) < 2:
        return 1.0, False
    table = np.array([[ref_counts.get(key, 0) for key in keys], [cur_counts.get(key, 0) for key in keys]])
    p_value = float(chi2_contingency(table, correction=False).pvalue)
    return p_value, p_value < threshold


chi_square_homogeneity = StatTest(
    name="chisquare_homogeneity",
    display_name="chi-square homogeneity p_value",
    allowed_feature_types=[ColumnType.Categorical, ColumnType.Numerical],
    default_threshold=0.05,
)
register_stattest(chi_square_homogeneity, _chi_square_homogeneity)


def check_drift(
    reference: pd.DataFrame | None,
    current: pd.DataFrame,
    settings: DriftSettings = DriftSettings(),
    numeric: Sequence[str] = NUMERIC_FEATURES,
    categorical: Sequence[str] = CATEGORICAL_FEATURES,
) -> DriftResult:
    """Profile two frames and compare them; a convenience for callers that hold rows, not profiles."""
    _check_kinds(numeric, categorical)
    current_profile = profile_frame(current, numeric, categorical, settings.sketch_size)
    if reference is None or len(reference) == 0:
        return compare_profiles(None, current_profile, settings)
    return compare_profiles(profile_frame(reference, numeric, categorical, settings.sketch_size), current_profile, settings)
