"""Alerts: filter the list, then acknowledge, silence for a while, or resolve one alert."""

from datetime import timedelta
from typing import Callable

import streamlit as st

from controlplane.auth import User
from controlplane.errors import ControlPlaneError
from controlplane.store import actions, queries
from dashboards.pages import common

STATUSES = ["firing", "acknowledged", "resolved"]
SEVERITIES = ["critical", "warning", "info"]
PAGE_SIZE = 25
SILENCE_HOURS = [1, 4, 24, 72, 168]


def _filter() -> queries.AlertFilter:
    pairs = queries.app_models(common.engine())
    first, second, third = st.columns(3)
    statuses = first.multiselect("Status", STATUSES, default=["firing", "acknowledged"], key="alerts_status")
    severities = second.multiselect("Severity", SEVERITIES, key="alerts_severity")
    labels = ["all"] + [f"{app} / {model}" for app, model in pairs]
    pair = third.selectbox("App / model", labels, key="alerts_pair")
    app, model = (None, None) if pair == "all" else pairs[labels.index(pair) - 1]
    return queries.AlertFilter(statuses=tuple(statuses), severities=tuple(severities), app=app, model=model)


def _table(page: queries.Page) -> None:
    st.dataframe(page.rows, hide_index=True, column_order=[
        "id", "status", "severity", "title", "app", "model", "occurrences", "last_seen", "silenced_until",
        "acknowledged_by", "resolved_by", "kind", "subject", "first_seen",
    ])
    st.caption(f"Alerts {page.offset + 1}–{page.offset + len(page.rows)} of {page.total}")


def _act(done: str, action: Callable[[User], object]) -> None:
    try:
        action(common.current_user())
    except (ControlPlaneError, ValueError) as exc:
        st.error(str(exc))
        return
    common.flash(done)
    st.rerun()


def _actions(page: queries.Page) -> None:
    st.subheader("Act on an alert")
    user = common.current_user()
    if not user.can_act:
        st.caption("Viewers can read alerts; log in as an operator to act on them.")
    rows = {int(row.id): row for row in page.rows.itertuples()}
    alert_id = st.selectbox("Alert", list(rows), format_func=lambda i: f"#{i} {rows[i].status} — {rows[i].title}", key="alerts_id")
    engine = common.engine()
    first, second = st.columns(2)
    if first.button("Acknowledge", disabled=not user.can_act, key="alerts_ack"):
        _act(f"Alert {alert_id} acknowledged.", lambda who: actions.acknowledge_alert(engine, alert_id, who))
    if second.button("Resolve", disabled=not user.can_act, key="alerts_resolve"):
        _act(f"Alert {alert_id} resolved.", lambda who: actions.resolve_alert(engine, alert_id, who))
    with st.form("silence"):
        st.caption("A silence covers every alert with the same kind, subject, app and model: "
                   "they send no notification and start no job until it ends.")
        hours = st.selectbox("Silence for", SILENCE_HOURS, format_func=lambda h: f"{h} hours", key="alerts_silence_hours")
        comment = st.text_input("Reason", key="alerts_silence_comment")
        if st.form_submit_button("Silence", disabled=not user.can_act):
            duration = timedelta(hours=hours)
            _act(f"Alerts like #{alert_id} silenced for {hours} hours.",
                 lambda who: actions.silence_alert(engine, alert_id, duration, who, comment))


def _silences() -> None:
    silences = queries.active_silences(common.engine())
    if silences.empty:
        return
    st.subheader("Active silences")
    st.dataframe(silences, hide_index=True)
    user = common.current_user()
    chosen = st.selectbox("Silence", silences["id"].tolist(), format_func=lambda i: f"#{i}", key="alerts_silence_id")
    if st.button("End this silence now", disabled=not user.can_act, key="alerts_silence_end"):
        _act(f"Silence {chosen} ended.", lambda who: actions.end_silence(common.engine(), int(chosen), who))


def render() -> None:
    """Draw the alerts page."""
    st.title("Alerts")
    common.show_flash()
    flt = _filter()
    total = queries.list_alerts(common.engine(), flt, limit=1).total
    if total == 0:
        st.info("No alerts match these filters." if flt.statuses or flt.severities or flt.app else "No alerts yet.")
    else:
        offset = common.page_offset(total, PAGE_SIZE, "alerts_page")
        page = queries.list_alerts(common.engine(), flt, offset=offset, limit=PAGE_SIZE)
        _table(page)
        _actions(page)
    _silences()


render()
