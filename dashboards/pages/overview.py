"""Overview: traffic, error rate, consumer lag, open alerts and today's spend per model."""

from datetime import datetime, time, timezone

import pandas as pd
import streamlit as st

from controlplane.store import queries
from dashboards.pages import common


@st.cache_data(ttl=15, show_spinner=False)
def _lag(url: str, bootstrap: str) -> queries.ConsumerLag:
    # Cached briefly: every rerun would otherwise open a Kafka connection.
    return queries.consumer_lag(common.engine(), bootstrap)


def _headline(traffic: pd.DataFrame, alerts: pd.DataFrame, today: pd.DataFrame) -> None:
    events = int(traffic["events"].sum()) if not traffic.empty else 0
    errors = int(traffic["errors"].sum()) if not traffic.empty else 0
    firing = int(alerts.loc[alerts["status"] == "firing", "alerts"].sum()) if not alerts.empty else 0
    acknowledged = int(alerts.loc[alerts["status"] == "acknowledged", "alerts"].sum()) if not alerts.empty else 0
    first, second, third, fourth = st.columns(4)
    first.metric("Events", f"{events:,}")
    second.metric("Error rate", f"{errors / events:.2%}" if events else "no events")
    third.metric("Open alerts", f"{firing + acknowledged}", help=f"{firing} firing, {acknowledged} acknowledged")
    spend, note = _spend(today)
    fourth.metric("Spend today (UTC)", spend)
    if note:
        fourth.caption(note)


def _spend(today: pd.DataFrame) -> tuple[str, str | None]:
    budget = common.settings().budget_usd_per_day
    if today.empty:
        return "$0.00" if budget is None else f"$0.00 of ${budget:,.2f}", None
    known = today["cost_usd"].dropna()
    unpriced = int(today["unpriced_events"].fillna(0).sum())
    if known.empty:
        return "unknown", f"{unpriced:,} events unpriced"
    spent = float(known.sum())
    label = common.usd(spent) + (f" of ${budget:,.2f}" if budget else "")
    note = f"{spent / budget:.0%} of budget" if budget else "no budget set"
    if unpriced:
        note += f", {unpriced:,} events unpriced"
    return label, note


def _per_model(traffic: pd.DataFrame, today: pd.DataFrame) -> None:
    st.subheader("Per model")
    spend = today.set_index(["app", "model"])["cost_usd"] if not today.empty else pd.Series(dtype=float)
    table = pd.DataFrame({
        "app": traffic["app"],
        "model": traffic["model"],
        "events": traffic["events"].map(common.count),
        "error rate": [f"{rate:.2%}" if pd.notna(rate) else "no events" for rate in traffic["error_rate"]],
        "p95 latency (ms, max of windows)": traffic["max_latency_p95_ms"].map(lambda v: "unknown" if pd.isna(v) else f"{v:,.0f}"),
        "spend today": [common.usd(spend.get((app, model))) for app, model in zip(traffic["app"], traffic["model"])],
        "last window end": traffic["last_window_end"],
    })
    st.dataframe(table, hide_index=True)


def _traffic_chart(since: datetime, until: datetime) -> None:
    unit = queries.series_unit(common.engine(), since, until)
    series = queries.traffic_series(common.engine(), since, until, unit)
    if series.empty:
        return
    st.subheader(f"Events per {unit}")
    series["app / model"] = series["app"] + " / " + series["model"]
    common.time_chart(series, "bucket", "events", "app / model", "events")


def _lag_table() -> None:
    st.subheader("Consumer lag")
    config = common.settings()
    lag = _lag(config.database_url, config.kafka_bootstrap)
    if lag.rows.empty:
        st.info("No stored consumer offsets yet: no worker has consumed a message.")
        return
    if lag.error:
        st.warning(f"Lag unknown: {lag.error}")
    table = lag.rows.assign(lag=lag.rows["lag"].map(lambda v: "unknown" if v is None else f"{int(v):,}"),
                            end_offset=lag.rows["end_offset"].map(lambda v: "unknown" if v is None else f"{int(v):,}"))
    st.dataframe(table, hide_index=True)


def _audit() -> None:
    with st.expander("Recent actions (audit log)"):
        page = queries.list_audit(common.engine(), limit=20)
        if page.rows.empty:
            st.caption("No actions recorded yet.")
        else:
            st.dataframe(page.rows, hide_index=True)


def render() -> None:
    """Draw the overview page."""
    st.title("Overview")
    since, until = common.time_range("overview_range")
    engine = common.engine()
    traffic = queries.traffic_by_model(engine, since, until)
    day_start = datetime.combine(until.date(), time(0), tzinfo=timezone.utc)
    today = queries.traffic_by_model(engine, day_start, None)
    alerts = queries.open_alert_counts(engine)
    _headline(traffic, alerts, today)
    if traffic.empty:
        st.info("No closed windows in this time range. Start a worker (`controlplane worker`) and send events, "
                "or run `controlplane demo`.")
    else:
        _per_model(traffic, today)
        _traffic_chart(since, until)
    _lag_table()
    _audit()


render()
