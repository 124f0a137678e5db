"""Pieces every dashboard page uses: the store engine, the logged-in user, time ranges and formatting."""

from __future__ import annotations

import html
import logging
import math
import time
from datetime import datetime, timedelta
from typing import Any, Sequence

import altair as alt
import pandas as pd
import streamlit as st
from sqlalchemy import Engine

from controlplane.auth import (
    FAILED_LOGIN_DELAY_S,
    User,
    authenticate,
    check_exposure,
    local_user,
    login_required,
)
from controlplane.errors import ControlPlaneError
from controlplane.settings import Settings, get_settings
from controlplane.store import actions
from controlplane.store.engine import make_engine
from controlplane.store.models import utcnow

log = logging.getLogger(__name__)

RANGES = {
    "Last hour": timedelta(hours=1),
    "Last 6 hours": timedelta(hours=6),
    "Last 24 hours": timedelta(hours=24),
    "Last 7 days": timedelta(days=7),
    "Last 30 days": timedelta(days=30),
}
USER_KEY = "controlplane_user"
FLASH_KEY = "controlplane_flash"
# Prompts and completions longer than this scroll inside a box instead of stretching the page.
LONG_TEXT_CHARS = 2_000


@st.cache_resource(show_spinner=False)
def _engine(url: str) -> Engine:
    # One engine (and connection pool) per URL for every session of this server process.
    return make_engine(url)


def settings() -> Settings:
    """Return the process settings."""
    return get_settings()


def engine() -> Engine:
    """Return the shared engine of the store in CONTROLPLANE_DATABASE_URL."""
    return _engine(settings().database_url)


def login_gate() -> User:
    """Return the user of this session, showing the login form and stopping the page until one logs in."""
    config = settings()
    try:
        check_exposure(config)
    except ControlPlaneError as exc:
        st.error(str(exc))
        st.stop()
    if not login_required(config):
        return local_user()
    user = st.session_state.get(USER_KEY)
    if user is not None:
        return user
    _login_form(config)
    st.stop()


def _login_form(config: Settings) -> None:
    st.title("Control plane")
    with st.form("login"):
        name = st.text_input("Your name", help="Recorded in the audit log with every action you take.")
        password = st.text_input("Password", type="password")
        submitted = st.form_submit_button("Log in")
    if not submitted:
        return
    role = authenticate(config, password) if name.strip() else None
    if role is None:
        log.warning("dashboard login failed for the name %r", name.strip())
        time.sleep(FAILED_LOGIN_DELAY_S)
        st.error("Login failed: enter your name and a valid password.")
        return
    user = User(name=name.strip(), role=role)
    st.session_state[USER_KEY] = user
    actions.record_login(engine(), user)
    st.rerun()


def logout() -> None:
    """Forget the logged-in user of this session."""
    st.session_state.pop(USER_KEY, None)


def current_user() -> User:
    """Return the user of this session (the local operator when no login is required)."""
    return st.session_state.get(USER_KEY) or local_user()


def flash(message: str) -> None:
    """Keep a success message for the next run, which st.rerun starts."""
    st.session_state[FLASH_KEY] = message


def show_flash() -> None:
    """Show and forget the message kept by flash()."""
    message = st.session_state.pop(FLASH_KEY, None)
    if message:
        st.success(message)


def time_range(key: str, default: str = "Last 24 hours") -> tuple[datetime, datetime]:
    """Show a range picker and return (since, until) in UTC."""
    choice = st.selectbox("Time range (UTC)", list(RANGES), index=list(RANGES).index(default), key=key)
    until = utcnow()
    return until - RANGES[choice], until


def page_offset(total: int, page_size: int, key: str) -> int:
    """Show a page number input when there is more than one page, and return the row offset."""
    pages = max(1, math.ceil(total / page_size))
    if pages == 1:
        return 0
    number = st.number_input(f"Page (of {pages})", min_value=1, max_value=pages, value=1, step=1, key=key)
    return (int(number) - 1) * page_size


def time_chart(frame: pd.DataFrame, x: str, y: str, series: str | None, y_title: str, y_format: str = ",.0f") -> None:
    """Draw one line per `series` value over time in UTC, with points so that a single bucket still shows."""
    encoding = {
        "x": alt.X(f"{x}:T", title="time (UTC)", scale=alt.Scale(type="utc"), axis=alt.Axis(format="%m-%d %H:%M")),
        "y": alt.Y(f"{y}:Q", title=y_title, axis=alt.Axis(format=y_format)),
        "tooltip": [alt.Tooltip(f"{x}:T", title="time (UTC)", format="%Y-%m-%d %H:%M", formatType="utc"), alt.Tooltip(f"{y}:Q", format=y_format)],
    }
    if series is not None:
        encoding["color"] = alt.Color(f"{series}:N", title=None)
        encoding["tooltip"].append(series)
    st.altair_chart(alt.Chart(frame).mark_line(point=True).encode(**encoding))


def usd(value: Any) -> str:
    """Format dollars, with a missing value shown as "unknown", never as $0."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "unknown"
    return f"${value:,.4f}" if abs(value) < 1 else f"${value:,.2f}"


def count(value: Any) -> str:
    """Format a count, with a missing value shown as "unknown"."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "unknown"
    return f"{int(value):,}"


def highlight(text: str | None, spans: Sequence[dict[str, Any]], field: str) -> str:
    """Return `text` as escaped HTML with the detector spans of `field` wrapped in <mark> elements."""
    if not text:
        return "<em>(empty)</em>"
    marks = sorted(
        (max(0, int(span["start"])), min(len(text), int(span["end"])), span)
        for span in spans
        if span.get("field") == field and span.get("end", 0) > span.get("start", 0)
    )
    pieces, position = [], 0
    for start, end, span in marks:
        start = max(start, position)  # overlapping spans: the earlier one keeps the shared characters
        if start >= end:
            continue
        pieces.append(html.escape(text[position:start]))
        title = html.escape(f"{span.get('detector')}: {span.get('label')} ({float(span.get('score', 0)):.2f})")
        colour = "#ffd6d6" if span.get("detector") == "toxicity" else "#fff2a8"
        pieces.append(f'<mark title="{title}" style="background:{colour}">{html.escape(text[start:end])}</mark>')
        position = end
    pieces.append(html.escape(text[position:]))
    return '<div style="white-space:pre-wrap;font-family:monospace">' + "".join(pieces) + "</div>"


def show_highlighted(text: str | None, spans: Sequence[dict[str, Any]], field: str) -> None:
    """Show `text` with its spans highlighted, in a scrolling box when it is long."""
    markup = highlight(text, spans, field)
    if len(text or "") <= LONG_TEXT_CHARS:
        st.markdown(markup, unsafe_allow_html=True)
        return
    with st.container(height=400):
        st.markdown(markup, unsafe_allow_html=True)


def span_summary(spans: Sequence[dict[str, Any]]) -> str:
    """Summarize detector spans as "detector:label" names, e.g. "pii:EMAIL_ADDRESS, toxicity:offensive"."""
    return ", ".join(sorted({f"{span.get('detector')}:{span.get('label')}" for span in spans or []}))
