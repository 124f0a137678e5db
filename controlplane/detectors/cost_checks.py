"""Cost checks of a closed window: spend and tokens per request against a seasonal baseline, budget burn rate.

Baseline. The windows of the same (app, model) that started at the same time of day on each
of the previous `seasonal_days` days, give or take `seasonal_slack_s`. Where fewer than
`min_baseline` of those exist (a new deployment, a short history), the `recent_windows`
windows before this one stand in, without seasonality.

Test. A robust z-score: (value - median) / (1.4826 * MAD), where MAD is the median absolute
deviation of the baseline. The scale has a floor of `relative_floor` times the median, so a
perfectly flat baseline does not turn a change of one cent into an anomaly. A window above
`z_threshold` gives a finding; twice that is critical. Only increases are reported: a drop in
spend shows as a traffic drop.

Budget burn rate. Spend of every app and model over the last `burn_short_s` and over the last
`burn_long_s`, each divided by the budget's share for that span. Both must reach
`burn_threshold`: the long span shows that the overspend is sustained, the short one that it
still goes on. A rate of 2 spends a day's budget in 12 hours.
"""

from __future__ import annotations

import statistics
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Sequence

from controlplane.detectors.window_checks import FindingSpec

MAD_TO_SIGMA = 1.4826  # MAD of a normal sample times this estimates its standard deviation
DAY = timedelta(days=1)


@dataclass(frozen=True)
class CostSettings:
    """Settings of the cost checks; the defaults suit 60-second windows."""

    z_threshold: float = 6.0
    min_baseline: int = 8
    seasonal_days: int = 7
    seasonal_slack_s: float = 1800.0
    recent_windows: int = 60
    relative_floor: float = 0.05
    budget_usd_per_day: float | None = None
    burn_short_s: float = 3600.0
    burn_long_s: float = 6 * 3600.0
    burn_threshold: float = 2.0


@dataclass(frozen=True)
class WindowCost:
    """Spend and tokens of one closed window; None where no event of the window reported them."""

    start: datetime
    spend_usd: float | None
    tokens_per_request: float | None


def tokens_per_request(input_tokens: int | None, output_tokens: int | None, events_with_usage: int) -> float | None:
    """Mean input plus output tokens over the events that reported usage; None when none did."""
    if events_with_usage <= 0 or input_tokens is None or output_tokens is None:
        return None
    return (input_tokens + output_tokens) / events_with_usage


def seasonal_ranges(start: datetime, settings: CostSettings) -> list[tuple[datetime, datetime]]:
    """Window-start ranges of the seasonal baseline: the same time of day on each previous day."""
    slack = timedelta(seconds=settings.seasonal_slack_s)
    return [(start - day * DAY - slack, start - day * DAY + slack) for day in range(1, settings.seasonal_days + 1)]


def choose_baseline(
    current: WindowCost, seasonal: Sequence[WindowCost], recent: Sequence[WindowCost], settings: CostSettings
) -> tuple[str, list[WindowCost]]:
    """Return ("seasonal" or "recent", the windows to compare with); recent windows are newest first."""
    same_time = [window for window in seasonal if window.start < current.start]
    if len(same_time) >= settings.min_baseline:
        return "seasonal", same_time
    return "recent", [window for window in recent if window.start < current.start][: settings.recent_windows]


def robust_z(value: float, baseline: Sequence[float], relative_floor: float) -> tuple[float, float, float]:
    """Return (z, median, scale) of `value` against `baseline`."""
    median = statistics.median(baseline)
    mad = statistics.median(abs(item - median) for item in baseline)
    scale = max(MAD_TO_SIGMA * mad, relative_floor * abs(median), 1e-9)
    return (value - median) / scale, median, scale


def check_cost_anomalies(
    current: WindowCost, seasonal: Sequence[WindowCost], recent: Sequence[WindowCost], settings: CostSettings
) -> list[FindingSpec]:
    """Findings for a window whose spend or tokens per request is far above its baseline."""
    kind, baseline = choose_baseline(current, seasonal, recent, settings)
    findings = []
    for subject, label, unit, attribute in (
        ("spend_anomaly", "spend", "$", "spend_usd"),
        ("tokens_per_request_anomaly", "tokens per request", "", "tokens_per_request"),
    ):
        value = getattr(current, attribute)
        history = [known for window in baseline if (known := getattr(window, attribute)) is not None]
        if value is None or len(history) < settings.min_baseline:
            continue
        z, median, scale = robust_z(value, history, settings.relative_floor)
        if z < settings.z_threshold:
            continue
        findings.append(
            FindingSpec(
                kind="cost",
                subject=subject,
                severity="critical" if z >= 2 * settings.z_threshold else "warning",
                summary=f"{label} {unit}{value:,.4g} against a median of {unit}{median:,.4g} "
                f"over {len(history)} {kind} windows (robust z {z:.1f})",
                sample_size=len(history),
                test="robust z-score (median, MAD)",
                score=z,
                threshold=settings.z_threshold,
                details={"value": value, "baseline": kind, "median": median, "scale": scale, "baseline_windows": len(history)},
            )
        )
    return findings


def burn_rate(spend_usd: float, span_s: float, budget_usd_per_day: float) -> float:
    """Spend over a span divided by the budget's share for that span."""
    return spend_usd / (budget_usd_per_day * span_s / DAY.total_seconds())


def check_budget_burn(short_spend: float, long_spend: float, settings: CostSettings) -> list[FindingSpec]:
    """Return a finding when both the short and the long burn rate reach the threshold; none without a budget."""
    budget = settings.budget_usd_per_day
    if budget is None:
        return []
    short = burn_rate(short_spend, settings.burn_short_s, budget)
    long = burn_rate(long_spend, settings.burn_long_s, budget)
    if min(short, long) < settings.burn_threshold:
        return []
    hours_left = 24.0 / long
    return [
        FindingSpec(
            kind="cost",
            subject="budget_burn",
            severity="critical" if min(short, long) >= 2 * settings.burn_threshold else "warning",
            summary=f"spend burns the daily budget of ${budget:,.2f} {long:.1f}x as fast as it lasts "
            f"(last {settings.burn_long_s / 3600:g} h; {short:.1f}x over the last {settings.burn_short_s / 3600:g} h): "
            f"a day's budget lasts {hours_left:.1f} h at this pace",
            sample_size=1,
            test="burn rate over a short and a long span",
            score=min(short, long),
            threshold=settings.burn_threshold,
            details={
                "budget_usd_per_day": budget, "short_rate": short, "long_rate": long,
                "short_spend_usd": short_spend, "long_spend_usd": long_spend,
                "short_s": settings.burn_short_s, "long_s": settings.burn_long_s,
            },
            app="*",
            model="*",
        )
    ]
