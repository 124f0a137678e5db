"""Sequential change test on the flagged rate: a Bernoulli CUSUM over consecutive windows.

The per-window binomial test in `window_checks.check_safety_rate` needs a large jump inside
one window. A CUSUM adds up evidence across windows, so a persistent, smaller rise (a rate
that doubles from 1% to 2%) is caught after some thousands of events. The statistic is

    S_t = max(0, S_{t-1} + f_t * log(p1 / p0) + (n_t - f_t) * log((1 - p1) / (1 - p0)))

over windows t with n_t events of which f_t were flagged. p0 is the reference rate, and p1 =
`rate_ratio` * p0 is the rate the test is tuned to detect. An alarm is raised when S_t reaches
`threshold`; S then restarts from 0. The path is recomputed from stored window statistics at
every close, so the test needs no state of its own and any worker can close the next window.

By Wald's bound, the chance that a stationary stream ever reaches the threshold h in one run
starting from 0 is below exp(-h). With h = 8 (0.03%) and a 1% base rate, that is an estimated
false alarm every few thousand windows of 300 events, while a doubled rate is found after
about 2,000 events.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

from controlplane.detectors.window_checks import FindingSpec


@dataclass(frozen=True)
class CusumSettings:
    """Settings of the flagged-rate CUSUM."""

    rate_ratio: float = 2.0
    threshold: float = 8.0
    max_windows: int = 240


def log_likelihood_ratio(flagged: int, total: int, base_rate: float, shifted_rate: float) -> float:
    """Log-likelihood ratio of `flagged` of `total` events under the shifted rate against the base rate."""
    return flagged * math.log(shifted_rate / base_rate) + (total - flagged) * math.log(
        (1.0 - shifted_rate) / (1.0 - base_rate)
    )


def cusum_path(windows: Sequence[tuple[int, int]], base_rate: float, settings: CusumSettings) -> list[tuple[float, bool]]:
    """Return (statistic, alarm) after each (flagged, total) window, oldest first; S restarts after an alarm."""
    shifted_rate = min(base_rate * settings.rate_ratio, 0.999)
    statistic, path = 0.0, []
    for flagged, total in windows:
        statistic = max(0.0, statistic + log_likelihood_ratio(flagged, total, base_rate, shifted_rate))
        alarm = statistic >= settings.threshold
        path.append((statistic, alarm))
        if alarm:
            statistic = 0.0
    return path


def check_flagged_cusum(
    history: Sequence[tuple[int, int]], current: tuple[int, int], reference_rate: float, settings: CusumSettings
) -> list[FindingSpec]:
    """Run the CUSUM over the earlier windows and this one; return a finding when it alarms at this window."""
    if not 0.0 < reference_rate < 1.0 or current[1] == 0:
        return []
    windows = [*history[-settings.max_windows :], current]
    path = cusum_path(windows, reference_rate, settings)
    statistic, alarm = path[-1]
    if not alarm:
        return []

    # The run that raised the alarm: the windows since the statistic last stood at 0.
    start = len(path) - 1
    while start > 0 and path[start - 1][0] > 0.0 and not path[start - 1][1]:
        start -= 1
    run = windows[start:]
    flagged, total = sum(f for f, _ in run), sum(n for _, n in run)
    return [
        FindingSpec(
            kind="safety",
            subject="flagged_rate_trend",
            severity="warning",
            summary=f"flagged share {flagged / total:.2%} over the last {len(run)} windows ({flagged} of {total} events) "
            f"against {reference_rate:.2%} in the reference",
            sample_size=total,
            test=f"Bernoulli CUSUM, tuned to a {settings.rate_ratio:g}x rate",
            score=statistic,
            threshold=settings.threshold,
            details={"windows": len(run), "flagged": flagged, "events": total, "reference_rate": reference_rate},
        )
    ]
