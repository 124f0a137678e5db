"""Safety: flagged, personal-data and toxicity rates over time, and examples with the spans that fired."""

import pandas as pd
import streamlit as st

from controlplane.store import queries
from dashboards.pages import common

DETECTOR_COLUMNS = {"flagged": "any detector", "pii": "personal data (pii)", "toxic": "toxicity"}
EXAMPLES = 5


def _rates(since, until, model: str | None) -> None:
    unit = queries.series_unit(common.engine(), since, until)
    series = queries.traffic_series(common.engine(), since, until, unit)
    if model:
        series = series[series["model"] == model]
    if series.empty:
        st.info("No closed windows in this time range.")
        return
    totals = series.groupby("bucket")[["events", *DETECTOR_COLUMNS]].sum()
    rates = totals[list(DETECTOR_COLUMNS)].div(totals["events"].where(totals["events"] > 0), axis=0)
    st.subheader(f"Share of events each detector flagged, per {unit}")
    long = rates.rename(columns=DETECTOR_COLUMNS).reset_index().melt(id_vars="bucket", var_name="detector", value_name="rate")
    common.time_chart(long.dropna(), "bucket", "rate", "detector", "share of events", y_format=".1%")
    overall = totals.sum()
    columns = st.columns(len(DETECTOR_COLUMNS))
    for column, (name, label) in zip(columns, DETECTOR_COLUMNS.items()):
        share = overall[name] / overall["events"] if overall["events"] else None
        column.metric(label, "no events" if share is None else f"{share:.2%}", help=f"{int(overall[name]):,} events")


def _examples(since, until, model: str | None, detector: str) -> None:
    st.subheader("Recent flagged examples")
    flt = queries.FlaggedFilter(model=model, detector=detector or None, since=since, until=until)
    page = queries.list_flagged(common.engine(), flt, limit=EXAMPLES)
    if page.rows.empty:
        st.caption("No flagged interaction matches.")
        return
    for row in queries.get_flagged(common.engine(), page.rows["id"].tolist()):
        title = f"#{row['id']} {row['event_time']:%Y-%m-%d %H:%M:%S} UTC — {row['app']} / {row['model']} — {common.span_summary(row['detectors'])}"
        with st.expander(title):
            st.markdown("**Prompt**")
            common.show_highlighted(row["prompt"], row["detectors"], "prompt")
            st.markdown("**Completion**")
            common.show_highlighted(row["completion"], row["detectors"], "completion")


def _findings() -> None:
    findings = queries.recent_findings(common.engine(), kind="safety", limit=10)
    if not findings.empty:
        st.subheader("Recent safety findings")
        st.dataframe(findings, hide_index=True)


def render() -> None:
    """Draw the safety page."""
    st.title("Safety")
    since, until = common.time_range("safety_range")
    models = sorted({model for _, model in queries.app_models(common.engine())})
    model = st.selectbox("Model", ["all models", *models], key="safety_model")
    model = None if model == "all models" else model
    _rates(since, until, model)
    detector = st.selectbox("Examples flagged by", ["", "pii", "toxicity"], format_func=lambda v: v or "any detector", key="safety_detector")
    _examples(since, until, model, detector)
    _findings()


render()
