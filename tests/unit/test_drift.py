"""Tests of the per-column drift check of one window against a reference."""

import json
import math
import warnings

import numpy as np
import pandas as pd
import pytest

from controlplane.detectors.drift import (
    CATEGORICAL_FEATURES,
    NUMERIC_FEATURES,
    ColumnDrift,
    DriftResult,
    DriftSettings,
    check_drift,
)
from controlplane.errors import ConfigurationError, DetectorError

ALL_FEATURES = NUMERIC_FEATURES + CATEGORICAL_FEATURES

# Mean and standard deviation of each numeric feature in the reference traffic.
BASE = {
    "prompt_chars": (400.0, 80.0),
    "completion_chars": (1200.0, 300.0),
    "input_tokens": (100.0, 20.0),
    "output_tokens": (300.0, 75.0),
    "latency_ms": (4700.0, 900.0),
}


def make_frame(rows: int, seed: int, shifted: tuple[str, ...] = (), finish_reasons=("stop", "length")) -> pd.DataFrame:
    """Build a feature frame in which each column in `shifted` has its mean moved by three standard deviations."""
    rng = np.random.default_rng(seed)
    frame = {}
    for name, (mean, std) in BASE.items():
        if name in shifted:
            mean += 3 * std
        frame[name] = rng.normal(mean, std, rows)
    frame["finish_reason"] = rng.choice(finish_reasons, rows, p=_finish_probabilities(finish_reasons))
    frame["route"] = "/v1/chat/completions"
    frame["status"] = "ok"
    return pd.DataFrame(frame)


def _finish_probabilities(finish_reasons: tuple[str, ...]) -> list[float]:
    # "stop" dominates as in real traffic, and the other reasons share 10% evenly.
    rest = 0.1 / (len(finish_reasons) - 1)
    return [0.9] + [rest] * (len(finish_reasons) - 1)


def by_column(result: DriftResult) -> dict[str, ColumnDrift]:
    return {column.column: column for column in result.columns}


@pytest.mark.parametrize(
    ("shifted", "status", "drift_share", "drifted_columns"),
    [
        ((), "ok", 0.0, ()),
        (("prompt_chars", "input_tokens"), "ok", 0.25, ("prompt_chars", "input_tokens")),
        (
            ("prompt_chars", "completion_chars", "input_tokens"),
            "ok",
            0.375,
            ("prompt_chars", "completion_chars", "input_tokens"),
        ),
        (
            ("prompt_chars", "completion_chars", "input_tokens", "output_tokens"),
            "drifted",
            0.5,
            ("prompt_chars", "completion_chars", "input_tokens", "output_tokens"),
        ),
        (NUMERIC_FEATURES, "drifted", 0.625, NUMERIC_FEATURES),
    ],
)
def test_window_status_by_shifted_columns(shifted, status, drift_share, drifted_columns):
    result = check_drift(make_frame(300, seed=1), make_frame(300, seed=2, shifted=shifted))

    assert result.status == status
    assert result.drift_share == drift_share
    assert result.drifted_columns == drifted_columns


@pytest.mark.parametrize(
    ("seeds", "drift_share", "drifted_columns"),
    [
        ((1, 2), 0.0, ()),
        ((3, 4), 0.0, ()),
        # At a 0.05 threshold one column in twenty drifts by chance (here K-S p = 0.034),
        # and drift_share keeps such a window "ok".
        ((5, 6), 0.125, ("prompt_chars",)),
    ],
)
def test_same_distribution_is_ok(seeds, drift_share, drifted_columns):
    reference_seed, current_seed = seeds
    result = check_drift(make_frame(300, reference_seed), make_frame(300, current_seed))

    assert result.status == "ok"
    assert result.drift_share == drift_share
    assert result.drifted_columns == drifted_columns
    assert [c.n_current for c in result.columns] == [300] * 8


@pytest.mark.parametrize(
    ("rows", "column", "test", "threshold"),
    [
        (300, "prompt_chars", "K-S p_value", 0.01),
        (300, "finish_reason", "Z-test p_value", 0.01),
        (300, "route", "Z-test p_value", 0.01),
        # Above 1000 reference rows Evidently switches to distances with their own threshold.
        (1500, "prompt_chars", "Wasserstein distance (normed)", 0.1),
        (1500, "finish_reason", "Jensen-Shannon distance", 0.1),
    ],
)
def test_column_records_evidently_test(rows, column, test, threshold):
    result = check_drift(make_frame(rows, 1), make_frame(rows, 2), DriftSettings(threshold=0.01))
    drift = by_column(result)[column]

    assert drift.test == test
    assert drift.threshold == threshold
    assert drift.status == "ok"
    assert 0.0 <= drift.score <= 1.0


def test_all_none_column_is_insufficient_data():
    reference = make_frame(300, 1)
    current = make_frame(300, 2, shifted=NUMERIC_FEATURES)
    reference["input_tokens"] = None
    current["input_tokens"] = None

    result = check_drift(reference, current)
    columns = by_column(result)

    assert columns["input_tokens"] == ColumnDrift("input_tokens", "insufficient_data", None, None, None, 0, 0)
    assert result.drifted_columns == ("prompt_chars", "completion_chars", "output_tokens", "latency_ms")
    assert result.drift_share == 4 / 7
    assert result.status == "drifted"


@pytest.mark.parametrize(
    "current",
    [
        pd.DataFrame(columns=list(ALL_FEATURES)),
        pd.DataFrame(),
        make_frame(300, 2).iloc[:0],
    ],
    ids=["columns-only", "no-columns", "zero-rows"],
)
def test_empty_window_is_insufficient_data(current):
    result = check_drift(make_frame(300, 1), current)

    assert result.status == "insufficient_data"
    assert result.drift_share is None
    assert [c.status for c in result.columns] == ["insufficient_data"] * 8
    assert [c.n_reference for c in result.columns] == [300] * 8
    assert [c.n_current for c in result.columns] == [0] * 8


@pytest.mark.parametrize("reference", [None, pd.DataFrame(), make_frame(300, 1).iloc[:0]], ids=["none", "empty", "zero-rows"])
def test_missing_reference_is_no_reference(reference):
    result = check_drift(reference, make_frame(120, 2))

    assert result.status == "no_reference"
    assert result.drift_share is None
    assert [c.status for c in result.columns] == ["no_data"] * 8
    assert [c.n_current for c in result.columns] == [120] * 8


def test_unseen_category_drifts_without_warning():
    reference = make_frame(300, 1)
    current = make_frame(300, 2, finish_reasons=("stop", "length", "content_filter"))

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        result = check_drift(reference, current)
    finish = by_column(result)["finish_reason"]

    assert finish.status == "drifted"
    assert finish.test == "chi-square p_value"
    assert finish.score == 0.0
    assert result.status == "ok"
    assert [str(w.message) for w in caught if issubclass(w.category, RuntimeWarning)] == []


def test_unseen_route_is_tested():
    reference = make_frame(300, 1)
    current = make_frame(300, 2)
    current.loc[:99, "route"] = "/v1/embeddings"

    route = by_column(check_drift(reference, current))["route"]

    assert route.status == "drifted"
    assert route.test == "Z-test p_value"
    assert route.score < 1e-10


def test_column_counts_exclude_missing_values():
    reference = make_frame(120, 1)
    current = make_frame(80, 2)
    reference.loc[:19, "latency_ms"] = np.nan
    reference.loc[:4, "prompt_chars"] = math.inf
    reference.loc[:29, "finish_reason"] = None
    current.loc[:39, "output_tokens"] = None
    current.loc[:30, "completion_chars"] = np.nan
    current.loc[:29, "status"] = None

    columns = by_column(check_drift(reference, current))

    expected = {
        "prompt_chars": ("ok", 115, 80),
        "completion_chars": ("insufficient_data", 120, 49),
        "input_tokens": ("ok", 120, 80),
        "output_tokens": ("insufficient_data", 120, 40),
        "latency_ms": ("ok", 100, 80),
        "finish_reason": ("ok", 90, 80),
        "route": ("ok", 120, 80),
        "status": ("ok", 120, 50),
    }
    assert {name: (c.status, c.n_reference, c.n_current) for name, c in columns.items()} == expected


def test_absent_column_is_no_data():
    current = make_frame(300, 2).drop(columns=["latency_ms"])

    result = check_drift(make_frame(300, 1), current)
    latency = by_column(result)["latency_ms"]

    assert latency == ColumnDrift("latency_ms", "no_data", None, None, None, 300, 0)
    assert result.drift_share == 0.0


def test_numeric_column_with_text_raises():
    current = make_frame(300, 2)
    current["latency_ms"] = current["latency_ms"].astype(object)
    current.loc[0, "latency_ms"] = "slow"

    with pytest.raises(DetectorError, match="latency_ms"):
        check_drift(make_frame(300, 1), current)


def test_to_json_round_trips():
    result = check_drift(make_frame(300, 1), make_frame(300, 2, shifted=NUMERIC_FEATURES))

    document = json.loads(json.dumps(result.to_json()))

    assert document["status"] == "drifted"
    assert document["drift_share"] == 0.625
    assert document["columns"][0]["column"] == "prompt_chars"
    assert document["columns"][0]["test"] == "K-S p_value"
    assert document["columns"][0]["threshold"] == 0.05
    assert document["columns"][0]["n_reference"] == 300


@pytest.mark.parametrize(
    "settings",
    [
        {"min_rows": 1},
        {"threshold": 0.0},
        {"threshold": 1.0},
        {"drift_share": 0.0},
        {"drift_share": 1.5},
    ],
)
def test_invalid_settings_raise(settings):
    with pytest.raises(ConfigurationError):
        DriftSettings(**settings)


def test_column_in_both_kinds_raises():
    with pytest.raises(ConfigurationError, match="route"):
        check_drift(make_frame(300, 1), make_frame(300, 2), categorical=("route",), numeric=("route",))
