"""Tests of the feature drift check: column profiles, Evidently tests, missing shares, window rules."""

import json
import math
import warnings

import numpy as np
import pandas as pd
import pytest
from evidently.legacy.calculations.stattests.registry import get_registered_stattest
from evidently.legacy.core import ColumnType

from controlplane.detectors.drift import (
    CATEGORICAL_FEATURES,
    NUMERIC_FEATURES,
    ColumnDrift,
    ColumnProfile,
    DriftResult,
    DriftSettings,
    check_drift,
    compare_profiles,
    profile_column,
    profile_frame,
    profile_rows,
)
from controlplane.errors import ConfigurationError, DetectorError

ALL_FEATURES = NUMERIC_FEATURES + CATEGORICAL_FEATURES
SHARE_RULE = DriftSettings(rule="share")

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
    ("shifted", "status", "drift_share"),
    [
        ((), "ok", 0.0),
        (("latency_ms",), "drifted", 0.125),
        (("prompt_chars", "input_tokens"), "drifted", 0.25),
        (NUMERIC_FEATURES, "drifted", 0.625),
    ],
)
def test_bonferroni_rule_flags_one_drifted_column(shifted, status, drift_share):
    result = check_drift(make_frame(300, seed=1), make_frame(300, seed=2, shifted=shifted))

    assert result.status == status
    assert result.drift_share == drift_share
    assert result.drifted_columns == shifted
    assert {c.threshold for c in result.columns} == {0.01 / 8}


@pytest.mark.parametrize(
    ("shifted", "status", "drift_share"),
    [
        ((), "ok", 0.0),
        (("prompt_chars", "input_tokens"), "ok", 0.25),
        (("prompt_chars", "completion_chars", "input_tokens"), "ok", 0.375),
        (("prompt_chars", "completion_chars", "input_tokens", "output_tokens"), "drifted", 0.5),
        (NUMERIC_FEATURES, "drifted", 0.625),
    ],
)
def test_share_rule_needs_half_the_columns(shifted, status, drift_share):
    result = check_drift(make_frame(300, seed=1), make_frame(300, seed=2, shifted=shifted), SHARE_RULE)

    assert result.status == status
    assert result.drift_share == drift_share
    assert result.drifted_columns == shifted
    assert {c.threshold for c in result.columns} == {0.05}


@pytest.mark.parametrize("seeds", [(1, 2), (3, 4), (5, 6), (7, 8)])
def test_same_distribution_is_ok(seeds):
    reference_seed, current_seed = seeds
    result = check_drift(make_frame(300, reference_seed), make_frame(300, current_seed))

    assert result.status == "ok"
    assert result.drifted_columns == ()
    assert result.missing_status == "ok"
    assert [c.n_current for c in result.columns] == [300] * 8


@pytest.mark.parametrize(
    ("rows", "column", "test"),
    [
        (300, "prompt_chars", "K-S p_value"),
        (300, "finish_reason", "Z-test p_value"),
        (300, "route", "Z-test p_value"),
        # Evidently alone would switch to distances above 1000 reference values; the cap keeps p-values.
        (1500, "prompt_chars", "K-S p_value"),
        (1500, "finish_reason", "Z-test p_value"),
        (20_000, "latency_ms", "K-S p_value"),
    ],
)
def test_large_windows_keep_p_value_tests(rows, column, test):
    result = check_drift(make_frame(rows, 1), make_frame(rows, 2))
    drift = by_column(result)[column]

    assert drift.test == test
    assert drift.status == "ok"
    assert drift.n_reference == rows
    assert 0.0 <= drift.score <= 1.0


def test_numeric_profile_keeps_sorted_quantiles():
    values = list(range(10_000, 0, -1)) + [None, math.nan, math.inf]

    profile = profile_column(values, "numeric", "latency_ms", sketch_size=1000)

    assert (profile.rows, profile.missing, profile.present) == (10_003, 3, 10_000)
    assert len(profile.values) == 1000
    assert list(profile.values) == sorted(profile.values)
    assert profile.values[0] == 5.0
    assert profile.values[-1] == 9995.0


def test_small_numeric_profile_keeps_every_value():
    profile = profile_column([3, 1, 2, None], "numeric", "input_tokens")

    assert profile == ColumnProfile("numeric", 4, 1, values=(1.0, 2.0, 3.0))


def test_categorical_profile_counts_values_as_text():
    profile = profile_column(["stop", 200, "200", None, "stop"], "categorical", "status")

    assert profile == ColumnProfile("categorical", 5, 1, counts={"200": 2, "stop": 2})


def test_profile_rows_treats_absent_keys_as_missing():
    rows = [{"prompt_chars": 10, "route": "/chat"}, {"prompt_chars": 12}]

    profiles = profile_rows(rows)

    assert profiles["prompt_chars"].values == (10.0, 12.0)
    assert (profiles["route"].missing, profiles["latency_ms"].missing) == (1, 2)


def test_profiles_survive_json():
    profiles = profile_frame(make_frame(50, 1))

    restored = {name: ColumnProfile.from_json(json.loads(json.dumps(p.to_json()))) for name, p in profiles.items()}

    assert restored == profiles


def test_usage_gone_missing_is_its_own_signal():
    reference = make_frame(300, 1)
    current = make_frame(300, 2)
    current["input_tokens"] = None
    current["output_tokens"] = None

    result = check_drift(reference, current)
    missing = {c.column: c for c in result.missing_values}

    assert result.missing_status == "drifted"
    assert result.missing_drifted_columns == ("input_tokens", "output_tokens")
    assert (missing["input_tokens"].reference_share, missing["input_tokens"].current_share) == (0.0, 1.0)
    assert missing["input_tokens"].test == "Z-test p_value"
    assert missing["latency_ms"].status == "ok"
    assert by_column(result)["input_tokens"].status == "insufficient_data"
    assert result.status == "ok"


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
    [pd.DataFrame(columns=list(ALL_FEATURES)), make_frame(300, 2).iloc[:0]],
    ids=["columns-only", "zero-rows"],
)
def test_empty_window_is_insufficient_data(current):
    result = check_drift(make_frame(300, 1), current)

    assert result.status == "insufficient_data"
    assert result.missing_status == "insufficient_data"
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


@pytest.mark.parametrize(
    ("new_share", "status"),
    [
        # One event of a new reason in 300 is no evidence of change for a two-sample test.
        (1 / 300, "ok"),
        (0.3, "drifted"),
    ],
)
def test_category_absent_from_reference_is_reported(new_share, status):
    reference = make_frame(300, 1, finish_reasons=("stop", "length"))
    current = make_frame(300, 2, finish_reasons=("stop", "length"))
    current.loc[: round(new_share * 300) - 1, "finish_reason"] = "content_filter"
    reference.loc[:9, "finish_reason"] = "tool_calls"

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        finish = by_column(check_drift(reference, current))["finish_reason"]

    assert finish.new_categories == ("content_filter",)
    assert finish.test == "chi-square homogeneity p_value"
    assert finish.status == status
    assert [str(w.message) for w in caught if issubclass(w.category, RuntimeWarning)] == []


def test_unseen_route_is_tested():
    reference = make_frame(300, 1)
    current = make_frame(300, 2)
    current.loc[:99, "route"] = "/v1/embeddings"

    route = by_column(check_drift(reference, current))["route"]

    assert route.status == "drifted"
    assert route.test == "Z-test p_value"
    assert route.new_categories == ("/v1/embeddings",)
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


def test_scaled_counts_keep_every_category():
    reference = {"finish_reason": ColumnProfile("categorical", 100_000, 0, counts={"stop": 99_999, "length": 1})}
    current = {"finish_reason": ColumnProfile("categorical", 100_000, 0, counts={"stop": 99_998, "length": 2})}

    finish = compare_profiles(reference, current).columns[0]

    assert finish.status == "ok"
    assert finish.test == "Z-test p_value"
    assert finish.n_reference == 100_000


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
    assert document["rule"] == "bonferroni"
    assert document["drift_share"] == 0.625
    assert document["columns"][0]["column"] == "prompt_chars"
    assert document["columns"][0]["test"] == "K-S p_value"
    assert document["columns"][0]["threshold"] == 0.01 / 8
    assert document["columns"][0]["n_reference"] == 300
    assert document["missing_values"][0]["reference_share"] == 0.0


def test_homogeneity_test_is_registered_with_evidently():
    test = get_registered_stattest("chisquare_homogeneity", ColumnType.Categorical)
    reference = pd.Series(["a"] * 50 + ["b"] * 50)

    same = test(reference, pd.Series(["a"] * 48 + ["b"] * 50 + ["c"] * 2), ColumnType.Categorical, 0.05)
    changed = test(reference, pd.Series(["a"] * 20 + ["b"] * 50 + ["c"] * 30), ColumnType.Categorical, 0.05)

    assert same.drifted is False
    assert changed.drifted is True
    assert changed.drift_score < 1e-8


@pytest.mark.parametrize(
    "settings",
    [
        {"min_rows": 1},
        {"threshold": 0.0},
        {"threshold": 1.0},
        {"drift_share": 0.0},
        {"drift_share": 1.5},
        {"rule": "majority"},
        {"window_alpha": 0.0},
        {"sketch_size": 5000},
    ],
)
def test_invalid_settings_raise(settings):
    with pytest.raises(ConfigurationError):
        DriftSettings(**settings)


def test_column_in_both_kinds_raises():
    with pytest.raises(ConfigurationError, match="route"):
        check_drift(make_frame(300, 1), make_frame(300, 2), categorical=("route",), numeric=("route",))
