"""Reads of earlier windows for the cost and flagged-rate checks, in the transaction that closes a window."""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any, Mapping, Sequence

from sqlalchemy import func, or_, select
from sqlalchemy.orm import Session

from controlplane.detectors.cost_checks import (
    CostSettings,
    WindowCost,
    check_budget_burn,
    check_cost_anomalies,
    seasonal_ranges,
    tokens_per_request,
)
from controlplane.detectors.sequential import CusumSettings, check_flagged_cusum
from controlplane.detectors.window_checks import FindingSpec, Profile
from controlplane.settings import Settings
from controlplane.store.models import WindowStats
from controlplane.windows import as_utc

_COLUMNS = (
    WindowStats.window_start, WindowStats.cost_usd, WindowStats.input_tokens, WindowStats.output_tokens,
    WindowStats.event_count, WindowStats.usage_unknown_count,
)


def cost_settings(settings: Settings) -> CostSettings:
    """Build the cost-check settings from the process settings."""
    return CostSettings(
        z_threshold=settings.cost_z_threshold, min_baseline=settings.cost_min_baseline,
        budget_usd_per_day=settings.budget_usd_per_day, burn_threshold=settings.budget_burn_threshold,
    )


def window_cost(start: datetime, summary: Mapping[str, Any]) -> WindowCost:
    """Build the cost figures of a window from its `windows.summarize` summary."""
    with_usage = summary["event_count"] - summary["usage_unknown_count"]
    return WindowCost(
        as_utc(start), summary["cost_usd"], tokens_per_request(summary["input_tokens"], summary["output_tokens"], with_usage)
    )


def cost_findings(
    session: Session, app: str, model: str, start: datetime, window_s: float, summary: Mapping[str, Any],
    settings: CostSettings,
) -> list[FindingSpec]:
    """Cost anomalies of the window being closed, and the budget burn rate up to its end."""
    current = window_cost(start, summary)
    same_key = (WindowStats.app == app, WindowStats.model == model, WindowStats.window_start < start)
    ranges = seasonal_ranges(start, settings)
    seasonal = session.execute(
        select(*_COLUMNS).where(*same_key, or_(*(WindowStats.window_start.between(low, high) for low, high in ranges)))
    ).all()
    recent = session.execute(
        select(*_COLUMNS).where(*same_key).order_by(WindowStats.window_start.desc()).limit(settings.recent_windows)
    ).all()
    findings = check_cost_anomalies(current, [_cost(row) for row in seasonal], [_cost(row) for row in recent], settings)
    if settings.budget_usd_per_day is not None:
        end = start + timedelta(seconds=window_s)
        spent = [
            _spend_since(session, end - timedelta(seconds=span), start) + (current.spend_usd or 0.0)
            for span in (settings.burn_short_s, settings.burn_long_s)
        ]
        findings += check_budget_burn(spent[0], spent[1], settings)
    return findings


def _cost(row: Any) -> WindowCost:
    return window_cost(
        row.window_start,
        {"cost_usd": row.cost_usd, "input_tokens": row.input_tokens, "output_tokens": row.output_tokens,
         "event_count": row.event_count, "usage_unknown_count": row.usage_unknown_count},
    )


def _spend_since(session: Session, since: datetime, before: datetime) -> float:
    # Every app and model: the budget is one for the whole deployment. The window being closed
    # is not stored yet, and windows that start after it are left out.
    total = session.scalar(
        select(func.sum(WindowStats.cost_usd)).where(WindowStats.window_end > since, WindowStats.window_start < before)
    )
    return float(total or 0.0)


def flagged_history(session: Session, app: str, model: str, start: datetime, limit: int) -> list[tuple[int, int]]:
    """Return (flagged, events) of up to `limit` windows of (app, model) before `start`, oldest first."""
    rows = session.execute(
        select(WindowStats.flagged_count, WindowStats.event_count)
        .where(WindowStats.app == app, WindowStats.model == model, WindowStats.window_start < start)
        .order_by(WindowStats.window_start.desc())
        .limit(limit)
    ).all()
    return [(int(flagged or 0), int(events)) for flagged, events in reversed(rows)]


def flagged_trend_findings(
    session: Session, app: str, model: str, start: datetime, reference: Profile, rows: Sequence[Mapping[str, Any]],
    settings: CusumSettings,
) -> list[FindingSpec]:
    """Run the flagged-rate CUSUM over the earlier windows of (app, model) and the window being closed."""
    history = flagged_history(session, app, model, start, settings.max_windows)
    current = (sum(1 for row in rows if row.get("flagged")), len(rows))
    # The same pseudo-count as the per-window test, so that a clean reference is not a rate of 0.
    base_rate = (reference.flagged_count + 1) / (reference.event_count + 2)
    return check_flagged_cusum(history, current, base_rate, settings)
