"""Cost: spend and tokens by model and app over time; unknown cost stays unknown, never $0."""

import pandas as pd
import streamlit as st

from controlplane.store import queries
from dashboards.pages import common


def _by_pair_table(traffic: pd.DataFrame) -> None:
    st.subheader("Spend and tokens per app and model")
    table = pd.DataFrame({
        "app": traffic["app"],
        "model": traffic["model"],
        "events": traffic["events"].map(common.count),
        "spend (priced events)": traffic["cost_usd"].map(common.usd),
        "unpriced events": traffic["unpriced_events"].map(common.count),
        "input tokens": traffic["input_tokens"].map(common.count),
        "output tokens": traffic["output_tokens"].map(common.count),
        "events without usage": traffic["usage_unknown_events"].map(common.count),
    })
    st.dataframe(table, hide_index=True)


def _headline(traffic: pd.DataFrame) -> None:
    known = traffic["cost_usd"].dropna()
    unpriced = int(traffic["unpriced_events"].fillna(0).sum())
    events = int(traffic["events"].sum())
    first, second, third = st.columns(3)
    first.metric("Spend on priced events", common.usd(float(known.sum())) if not known.empty else "unknown")
    second.metric("Unpriced events", f"{unpriced:,}", help="Events whose model has no price, or whose usage is unknown.")
    third.metric("Events", f"{events:,}")


def _series(since, until, group: str) -> None:
    unit = queries.series_unit(common.engine(), since, until)
    series = queries.traffic_series(common.engine(), since, until, unit)
    if series.empty:
        return
    # min_count=1 keeps a bucket whose cost is entirely unknown out of the chart instead of drawing it as $0.
    spend = series.groupby(["bucket", group])["cost_usd"].sum(min_count=1).dropna().reset_index()
    st.subheader(f"Spend per {group} and {unit} (priced events only)")
    if spend.empty:
        st.caption("No event in this range has a known cost.")
    else:
        common.time_chart(spend, "bucket", "cost_usd", group, "US dollars", y_format="$,.4~f")
    tokens = series.groupby(["bucket", group])[["input_tokens", "output_tokens"]].sum(min_count=1)
    tokens = tokens.sum(axis=1, min_count=1).rename("tokens").dropna().reset_index()
    st.subheader(f"Tokens per {group} and {unit} (events with known usage)")
    if tokens.empty:
        st.caption("No event in this range reported its token usage.")
    else:
        common.time_chart(tokens, "bucket", "tokens", group, "input + output tokens")


def _unpriced(since, until) -> None:
    st.subheader("Unpriced models")
    rows = queries.unpriced_models(common.engine(), since, until)
    if rows.empty:
        st.caption("Every event in this range had a price.")
        return
    st.caption("Add these models to the price table (CONTROLPLANE_PRICE_TABLE) to count their cost.")
    st.dataframe(rows, hide_index=True)


def render() -> None:
    """Draw the cost page."""
    st.title("Cost")
    since, until = common.time_range("cost_range")
    traffic = queries.traffic_by_model(common.engine(), since, until)
    if traffic.empty:
        st.info("No closed windows in this time range, so there is no spend to show.")
        return
    _headline(traffic)
    group = st.radio("Group by", ["model", "app"], horizontal=True, key="cost_group")
    _series(since, until, group)
    _by_pair_table(traffic)
    _unpriced(since, until)


render()
