"""Bernoulli CUSUM on the flagged rate across windows."""

from __future__ import annotations

import math

import numpy as np
import pytest

from controlplane.detectors.sequential import CusumSettings, check_flagged_cusum, cusum_path, log_likelihood_ratio

SETTINGS = CusumSettings()


def test_log_likelihood_ratio_by_hand():
    # 3 of 100 flagged, 1% against 2%: 3 ln 2 + 97 ln(0.98 / 0.99).
    expected = 3 * math.log(2) + 97 * math.log(0.98 / 0.99)
    assert log_likelihood_ratio(3, 100, 0.01, 0.02) == pytest.approx(expected)


def test_statistic_restarts_after_an_alarm():
    path = cusum_path([(10, 100)] * 4, base_rate=0.01, settings=CusumSettings(threshold=8.0))
    # Each window adds 10 ln 2 + 90 ln(0.98 / 0.99) = 6.03: the second window crosses 8.
    assert [alarm for _, alarm in path] == [False, True, False, True]
    assert path[0][0] == pytest.approx(10 * math.log(2) + 90 * math.log(0.98 / 0.99))


def test_doubled_rate_is_found_over_several_windows():
    rng = np.random.default_rng(7)
    history = [(int(rng.binomial(300, 0.02)), 300) for _ in range(30)]
    alarms = [
        index for index in range(len(history))
        if check_flagged_cusum(history[:index], history[index], reference_rate=0.01, settings=SETTINGS)
    ]
    # A 2% rate against a 1% reference gains about 1.2 a window: the first alarm comes within
    # about 7 windows, far from the single-window test's reach (6 flags in 300 is not rare at 1%).
    assert alarms and alarms[0] <= 12


def test_stationary_rate_stays_quiet():
    rng = np.random.default_rng(11)
    windows = [(int(rng.binomial(300, 0.01)), 300) for _ in range(500)]
    alarms = sum(1 for _, alarm in cusum_path(windows, base_rate=0.01, settings=SETTINGS) if alarm)
    assert alarms == 0


def test_finding_reports_the_run_that_raised_it():
    history = [(3, 300)] * 5 + [(12, 300)]
    [finding] = check_flagged_cusum(history, (12, 300), reference_rate=0.01, settings=SETTINGS)
    assert (finding.kind, finding.subject) == ("safety", "flagged_rate_trend")
    assert finding.details["windows"] == 2
    assert finding.details["flagged"] == 24
    assert finding.sample_size == 600
    assert finding.score >= finding.threshold == 8.0


def test_empty_window_or_degenerate_rate_gives_nothing():
    assert check_flagged_cusum([(50, 100)], (0, 0), 0.01, SETTINGS) == []
    assert check_flagged_cusum([], (50, 100), 0.0, SETTINGS) == []
    assert check_flagged_cusum([], (50, 100), 1.0, SETTINGS) == []
