"""Cost anomalies against a robust, seasonal baseline, and the budget burn rate."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

import pytest

from controlplane.detectors.cost_checks import (
    CostSettings,
    WindowCost,
    burn_rate,
    check_budget_burn,
    check_cost_anomalies,
    choose_baseline,
    robust_z,
    seasonal_ranges,
    tokens_per_request,
)

NOW = datetime(2026, 12, 4, 14, 0, tzinfo=timezone.utc)
SETTINGS = CostSettings(min_baseline=5, z_threshold=6.0)


def windows(values: list[float], step: timedelta = timedelta(minutes=-1), tokens: float = 500.0) -> list[WindowCost]:
    return [WindowCost(NOW + step * (index + 1), value, tokens) for index, value in enumerate(values)]


def test_robust_z_ignores_one_outlier_in_the_baseline():
    # The median and MAD of [1, 1.1, 0.9, 1, 50] are 1 and 0.1: the 50 does not widen the scale.
    z, median, scale = robust_z(2.0, [1.0, 1.1, 0.9, 1.0, 50.0], relative_floor=0.05)
    assert median == 1.0
    assert scale == pytest.approx(1.4826 * 0.1)
    assert z == pytest.approx(1.0 / (1.4826 * 0.1))


def test_flat_baseline_uses_the_relative_floor():
    z, _, scale = robust_z(1.2, [1.0] * 10, relative_floor=0.05)
    assert scale == pytest.approx(0.05)
    assert z == pytest.approx(4.0)


def test_spend_spike_is_a_finding_with_its_numbers():
    recent = windows([1.0, 1.05, 0.95, 1.0, 1.02, 0.98, 1.01, 0.99])
    current = WindowCost(NOW, 3.0, 500.0)
    [finding] = check_cost_anomalies(current, [], recent, SETTINGS)
    assert (finding.kind, finding.subject, finding.sample_size) == ("cost", "spend_anomaly", 8)
    assert finding.details["baseline"] == "recent"
    assert finding.score > 2 * SETTINGS.z_threshold
    assert finding.severity == "critical"
    assert finding.threshold == 6.0
    assert finding.test == "robust z-score (median, MAD)"


def test_tokens_per_request_jump_alone():
    recent = windows([1.0] * 8, tokens=500.0)
    current = WindowCost(NOW, 1.0, 900.0)
    assert [finding.subject for finding in check_cost_anomalies(current, [], recent, SETTINGS)] == [
        "tokens_per_request_anomaly"
    ]


def test_normal_window_and_a_drop_give_nothing():
    recent = windows([1.0, 1.1, 0.9, 1.0, 1.05, 0.95, 1.0, 1.0])
    assert check_cost_anomalies(WindowCost(NOW, 1.1, 500.0), [], recent, SETTINGS) == []
    assert check_cost_anomalies(WindowCost(NOW, 0.1, 50.0), [], recent, SETTINGS) == []


def test_seasonal_baseline_absorbs_the_daily_peak():
    # Every afternoon spends 5 a window, every night 1: the 14:00 peak is normal against
    # earlier afternoons, though it is five times the last hour's nights.
    seasonal = windows([5.0, 5.2, 4.8, 5.1, 4.9, 5.0, 5.0], step=timedelta(days=-1))
    recent = windows([1.0] * 30)
    current = WindowCost(NOW, 5.1, 500.0)
    assert choose_baseline(current, seasonal, recent, SETTINGS)[0] == "seasonal"
    assert check_cost_anomalies(current, seasonal, recent, SETTINGS) == []
    assert [f.subject for f in check_cost_anomalies(current, [], recent, SETTINGS)] == ["spend_anomaly"]


def test_short_history_and_unknown_spend_give_nothing():
    assert check_cost_anomalies(WindowCost(NOW, 100.0, 500.0), [], windows([1.0] * 4), SETTINGS) == []
    unknown = [WindowCost(window.start, None, None) for window in windows([1.0] * 10)]
    assert check_cost_anomalies(WindowCost(NOW, 100.0, 9000.0), [], unknown, SETTINGS) == []
    assert check_cost_anomalies(WindowCost(NOW, None, None), [], windows([1.0] * 10), SETTINGS) == []


def test_seasonal_ranges_previous_days():
    ranges = seasonal_ranges(NOW, CostSettings(seasonal_days=2, seasonal_slack_s=600))
    assert ranges == [
        (NOW - timedelta(days=1, minutes=10), NOW - timedelta(days=1) + timedelta(minutes=10)),
        (NOW - timedelta(days=2, minutes=10), NOW - timedelta(days=2) + timedelta(minutes=10)),
    ]


def test_tokens_per_request_counts_only_events_with_usage():
    assert tokens_per_request(900, 300, 4) == 300.0
    assert tokens_per_request(None, 300, 4) is None
    assert tokens_per_request(0, 0, 0) is None


def test_budget_burn_needs_both_spans():
    settings = CostSettings(budget_usd_per_day=24.0, burn_threshold=2.0)  # $1 an hour
    assert burn_rate(2.0, 3600, 24.0) == pytest.approx(2.0)
    # A one-hour burst at 3x with a quiet rest of the 6 hours: long rate 0.5, no finding.
    assert check_budget_burn(short_spend=3.0, long_spend=3.0, settings=settings) == []
    [finding] = check_budget_burn(short_spend=3.0, long_spend=15.0, settings=settings)
    assert (finding.subject, finding.app, finding.model) == ("budget_burn", "*", "*")
    assert finding.details["long_rate"] == pytest.approx(2.5)
    assert finding.score == pytest.approx(2.5)
    assert "lasts 9.6 h" in finding.summary


def test_no_budget_means_no_burn_check():
    assert check_budget_burn(1e6, 1e6, CostSettings(budget_usd_per_day=None)) == []
