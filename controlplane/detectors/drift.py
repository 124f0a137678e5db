"""Data drift of one window against a reference, checked per column with Evidently.

Evidently (0.7.23) chooses the statistical test of each column from the data. When the
reference has at most 1000 non-missing values it runs a p-value test: K-S for numbers,
chi-square or Z-test for categories and for numbers with at most 5 distinct values. Above
1000 it measures a distance (normed Wasserstein, Jensen-Shannon). `DriftSettings.threshold`
applies to the p-value tests only, because a p-value and a distance are not on the same
scale, so distance tests keep Evidently's default threshold of 0.1.
"""

from __future__ import annotations

import logging
import math
import time
import warnings
from dataclasses import asdict, dataclass
from typing import NamedTuple, Sequence

import pandas as pd
from evidently import DataDefinition, Dataset, Report
from evidently.legacy.calculations.stattests.registry import get_stattest
from evidently.legacy.core import ColumnType
from evidently.metrics import ValueDrift

from controlplane.errors import ConfigurationError, DetectorError

logger = logging.getLogger(__name__)

NUMERIC_FEATURES = ("prompt_chars", "completion_chars", "input_tokens", "output_tokens", "latency_ms")
CATEGORICAL_FEATURES = ("finish_reason", "route", "status")

# The p-value tests among those Evidently 0.7 picks on its own. Every other test it picks is a distance.
_P_VALUE_TESTS = frozenset({"ks", "chisquare", "z"})


@dataclass(frozen=True)
class DriftSettings:
    """Settings of the drift detector."""

    min_rows: int = 50
    """Minimum non-missing values on each side for a column to be tested, below which it is "insufficient_data"."""
    threshold: float = 0.05
    """p-value below which one column has drifted, used by p-value tests and not by distances."""
    drift_share: float = 0.5
    """Share of tested columns that must drift for the window to count as drifted."""

    def __post_init__(self) -> None:
        if self.min_rows < 2:
            raise ConfigurationError(f"invalid min_rows {self.min_rows}: a statistical test needs at least 2 rows")
        if not 0 < self.threshold < 1:
            raise ConfigurationError(f"invalid threshold {self.threshold}: set a p-value between 0 and 1, e.g. 0.05")
        if not 0 < self.drift_share <= 1:
            raise ConfigurationError(f"invalid drift_share {self.drift_share}: set a share in (0, 1], e.g. 0.5")


@dataclass(frozen=True)
class ColumnDrift:
    """Drift of one column: "ok", "drifted", "insufficient_data", or "no_data" (column absent or no reference)."""

    column: str
    status: str
    test: str | None
    """Test name as Evidently reports it (e.g. "K-S p_value"), or None when the column was not tested."""
    score: float | None
    """p-value or distance, depending on the test."""
    threshold: float | None
    n_reference: int
    n_current: int


@dataclass(frozen=True)
class DriftResult:
    """Drift of one window: "ok", "drifted", "insufficient_data" or "no_reference"."""

    status: str
    drift_share: float | None
    """Share of tested columns that drifted; None when no column was tested."""
    columns: tuple[ColumnDrift, ...]

    @property
    def drifted_columns(self) -> tuple[str, ...]:
        """Names of the columns that drifted."""
        return tuple(c.column for c in self.columns if c.status == "drifted")

    def to_json(self) -> dict:
        """Convert the result to a dict of JSON types, with a non-finite score as None."""
        columns = []
        for column in self.columns:
            row = asdict(column)
            if row["score"] is not None and not math.isfinite(row["score"]):
                row["score"] = None
            columns.append(row)
        return {"status": self.status, "drift_share": self.drift_share, "columns": columns}


def check_drift(
    reference: pd.DataFrame | None,
    current: pd.DataFrame,
    settings: DriftSettings = DriftSettings(),
    numeric: Sequence[str] = NUMERIC_FEATURES,
    categorical: Sequence[str] = CATEGORICAL_FEATURES,
) -> DriftResult:
    """Check each feature column of `current` for drift against `reference`."""
    overlap = set(numeric) & set(categorical)
    if overlap:
        raise ConfigurationError(f"columns {sorted(overlap)} are listed as numeric and as categorical: list each once")
    started = time.perf_counter()

    if reference is None or len(reference) == 0:
        columns = tuple(
            ColumnDrift(name, "no_data", None, None, None, 0, _count(current, name, name in numeric))
            for name in (*numeric, *categorical)
        )
        return DriftResult("no_reference", None, columns)
    if len(current) == 0:
        columns = tuple(
            ColumnDrift(name, "insufficient_data", None, None, None, _count(reference, name, name in numeric), 0)
            for name in (*numeric, *categorical)
        )
        return DriftResult("insufficient_data", None, columns)

    reference = _clean(reference, numeric, categorical, "reference")
    current = _clean(current, numeric, categorical, "current")
    counts = {name: (_count(reference, name), _count(current, name)) for name in (*numeric, *categorical)}
    tested = [
        name
        for name, (n_ref, n_cur) in counts.items()
        if name in reference and name in current and min(n_ref, n_cur) >= settings.min_rows
    ]
    outcomes = _run_tests(reference, current, tested, set(numeric), settings) if tested else {}

    columns = tuple(_column_drift(name, counts[name], outcomes.get(name), reference, current) for name in counts)
    result = _summarize(columns, settings)
    logger.debug(
        "drift checked: status=%s share=%s tested=%d/%d reference_rows=%d current_rows=%d elapsed_ms=%.1f",
        result.status,
        result.drift_share,
        len(tested),
        len(columns),
        len(reference),
        len(current),
        (time.perf_counter() - started) * 1000,
    )
    return result


def _clean(frame: pd.DataFrame, numeric: Sequence[str], categorical: Sequence[str], side: str) -> pd.DataFrame:
    """Return the feature columns of `frame`: numbers as float with inf as NaN, categories as str."""
    cleaned = {}
    for name in numeric:
        if name not in frame:
            continue
        try:
            values = pd.to_numeric(frame[name]).astype(float)
        except (ValueError, TypeError) as exc:
            raise DetectorError(
                f"invalid column {name!r} in the {side} frame: not numeric ({exc}). Pass numbers, or None when unknown"
            ) from exc
        cleaned[name] = values.mask(values.abs() == math.inf)
    for name in categorical:
        if name in frame:
            # Mixed types such as 200 and "200" would otherwise count as two categories.
            cleaned[name] = frame[name].map(lambda value: value if pd.isna(value) else str(value)).astype(object)
    return pd.DataFrame(cleaned, index=frame.index)


def _count(frame: pd.DataFrame, name: str, is_numeric: bool = False) -> int:
    """Count the non-missing values of one column, or 0 when the column is absent."""
    if name not in frame:
        return 0
    column = frame[name]
    if is_numeric:
        column = pd.to_numeric(column, errors="coerce").replace([math.inf, -math.inf], math.nan)
    return int(column.notna().sum())


class _Outcome(NamedTuple):
    test: str
    score: float
    threshold: float
    drifted: bool


def _run_tests(
    reference: pd.DataFrame, current: pd.DataFrame, tested: list[str], numeric: set[str], settings: DriftSettings
) -> dict[str, _Outcome]:
    """Run one Evidently report with a ValueDrift metric per tested column."""
    metrics = []
    for name in tested:
        column_type = ColumnType.Numerical if name in numeric else ColumnType.Categorical
        # ValueDrift makes the same choice again from the same cleaned values. It is made here
        # only to tell whether settings.threshold applies, because the current API cannot report it first.
        test = get_stattest(reference[name].dropna(), current[name].dropna(), column_type, None)
        threshold = settings.threshold if test.name in _P_VALUE_TESTS else None
        metrics.append(ValueDrift(column=name, threshold=threshold))

    definition = DataDefinition(
        numerical_columns=[n for n in tested if n in numeric],
        categorical_columns=[n for n in tested if n not in numeric],
    )
    report = Report(metrics, include_tests=True)
    try:
        with warnings.catch_warnings():
            # A category absent from the reference has an expected count of 0 in the chi-square
            # test, so scipy warns about the division and returns p = 0, which counts as drift.
            warnings.filterwarnings("ignore", "divide by zero", RuntimeWarning)
            snapshot = report.run(
                current_data=Dataset.from_pandas(current[tested], data_definition=definition),
                reference_data=Dataset.from_pandas(reference[tested], data_definition=definition),
            )
    except (ValueError, TypeError) as exc:
        raise DetectorError(f"Evidently failed to test drift of columns {tested}: {exc}") from exc
    return _read_snapshot(snapshot.dict())


def _read_snapshot(snapshot: dict) -> dict[str, _Outcome]:
    """Map each column of an Evidently snapshot dict to its test outcome."""
    failed = {t["metric_config"]["metric_id"] for t in snapshot["tests"] if t["status"] == "FAIL"}
    outcomes = {}
    for metric in snapshot["metrics"]:
        config = metric["config"]
        outcomes[config["column"]] = _Outcome(
            test=config["method"],
            score=float(metric["value"]),
            threshold=float(config["threshold"]),
            drifted=metric["id"] in failed,
        )
    return outcomes


def _column_drift(
    name: str,
    counts: tuple[int, int],
    outcome: _Outcome | None,
    reference: pd.DataFrame,
    current: pd.DataFrame,
) -> ColumnDrift:
    """Build the ColumnDrift of one column from its counts and its test outcome, if tested."""
    n_ref, n_cur = counts
    if outcome is not None:
        status = "drifted" if outcome.drifted else "ok"
        return ColumnDrift(name, status, outcome.test, outcome.score, outcome.threshold, n_ref, n_cur)
    status = "no_data" if name not in reference or name not in current else "insufficient_data"
    return ColumnDrift(name, status, None, None, None, n_ref, n_cur)


def _summarize(columns: tuple[ColumnDrift, ...], settings: DriftSettings) -> DriftResult:
    """Decide the window's status from its columns."""
    tested = [c for c in columns if c.status in ("ok", "drifted")]
    if not tested:
        return DriftResult("insufficient_data", None, columns)
    share = sum(c.status == "drifted" for c in tested) / len(tested)
    status = "drifted" if share >= settings.drift_share else "ok"
    return DriftResult(status, share, columns)
