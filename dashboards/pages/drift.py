"""Drift: per-feature drift of each window against the reference, and the reference in use."""

import altair as alt
import pandas as pd
import streamlit as st

from controlplane.store import queries
from dashboards.pages import common

STATUS_COLOURS = alt.Scale(
    domain=["ok", "drifted", "insufficient_data", "no_data"], range=["#4c9a2a", "#d62728", "#bbbbbb", "#eeeeee"]
)
# Scores of 0 (a p-value below float precision) cannot sit on a log axis.
MIN_LOG_SCORE = 1e-30


def _choose_pair(pairs: list[tuple[str, str]]) -> tuple[str, str]:
    labels = [f"{app} / {model}" for app, model in pairs]
    choice = st.selectbox("App / model", labels, key="drift_pair")
    return pairs[labels.index(choice)]


def _reference(app: str, model: str) -> None:
    reference = queries.drift_reference(common.engine(), app, model)
    if reference is None:
        st.info("No drift reference yet: the first window with enough rows becomes the reference.")
        return
    source = reference["source_window_start"]
    st.caption(
        f"Reference in use: {reference['row_count']:,} rows taken from the window starting "
        f"{'unknown' if pd.isna(source) else f'{source:%Y-%m-%d %H:%M} UTC'}, set {reference['created_at']:%Y-%m-%d %H:%M:%S} UTC."
    )
    versions = queries.reference_profiles(common.engine(), app, model)
    if len(versions) > 1 or (len(versions) == 1 and versions["model_version"].iloc[0]):
        st.caption("References per model version (promote a window with `controlplane reference promote`):")
        st.dataframe(versions, hide_index=True, use_container_width=True)


def _share_chart(windows: pd.DataFrame) -> None:
    st.subheader("Share of drifted features per window")
    shares = windows.dropna(subset=["drift_share"])
    if shares.empty:
        st.caption("No window has been compared with a reference yet.")
        return
    common.time_chart(shares, "window_start", "drift_share", None, "share of drifted features", y_format=".0%")


def _feature_charts(scores: pd.DataFrame) -> None:
    st.subheader("Per-feature drift")
    status = alt.Chart(scores).mark_rect().encode(
        x=alt.X("window_start:T", title="window start (UTC)", scale=alt.Scale(type="utc")),
        y=alt.Y("feature:N", title=None),
        color=alt.Color("status:N", scale=STATUS_COLOURS),
        tooltip=["window_start:T", "feature", "status", "test", "score", "threshold"],
    )
    st.altair_chart(status)
    tested = scores.dropna(subset=["score"]).assign(score=lambda frame: frame["score"].clip(lower=MIN_LOG_SCORE))
    if tested.empty:
        return
    st.caption("Test scores: for p-value tests a score below the threshold means drift; for distances, above it.")
    lines = alt.Chart(tested).mark_line(point=True).encode(
        x=alt.X("window_start:T", title="window start (UTC)", scale=alt.Scale(type="utc")),
        y=alt.Y("score:Q", scale=alt.Scale(type="log"), title="score (log scale)"),
        color="feature:N",
        tooltip=["window_start:T", "feature", "test", "score", "threshold", "status"],
    )
    st.altair_chart(lines)


def _window_details(windows: pd.DataFrame) -> None:
    st.subheader("Details of one window")
    labels = [f"{start:%Y-%m-%d %H:%M} UTC — {status}" for start, status in zip(windows["window_start"], windows["drift_status"])]
    chosen = st.selectbox("Window", list(range(len(labels)))[::-1], format_func=lambda index: labels[index], key="drift_window")
    window = windows.iloc[chosen]
    drift = (window["details"] or {}).get("drift") or {}
    share = "not computed" if pd.isna(window["drift_share"]) else f"{window['drift_share']:.0%}"
    st.write(f"Status **{window['drift_status']}**, {window['events']:,} events, drifted share {share}.")
    columns = pd.DataFrame(drift.get("columns") or [])
    if columns.empty:
        st.caption(drift.get("reason") or "This window has no per-feature results.")
    else:
        st.dataframe(columns, hide_index=True)


def render() -> None:
    """Draw the drift page."""
    st.title("Drift")
    pairs = queries.app_models(common.engine())
    if not pairs:
        st.info("No closed windows yet, so there is no drift to show.")
        return
    app, model = _choose_pair(pairs)
    since, until = common.time_range("drift_range")
    _reference(app, model)
    windows = queries.drift_windows(common.engine(), app, model, since, until)
    if windows.empty:
        st.info(f"No windows of {app} / {model} in this time range.")
        return
    if len(windows) == queries.MAX_DRIFT_WINDOWS:
        st.caption(f"Showing the newest {queries.MAX_DRIFT_WINDOWS:,} windows of the range.")
    _share_chart(windows)
    scores = queries.feature_scores(windows)
    if not scores.empty:
        _feature_charts(scores)
    _window_details(windows)


render()
