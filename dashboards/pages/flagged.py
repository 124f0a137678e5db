"""Flagged interactions: filter, read with the detector spans highlighted, label, correct and export."""

import pandas as pd
import streamlit as st

from controlplane.errors import ControlPlaneError
from controlplane.export import FORMATS
from controlplane.store import actions, queries
from dashboards.pages import common

PAGE_SIZE = 25
LABEL_FILTERS = {"any": None, "unlabeled": "unlabeled", "correct": "correct", "incorrect": "incorrect"}
EXPORT_KEY = "flagged_export_file"


@st.cache_resource(show_spinner="Loading the personal-data detector…")
def _pii_detector():
    # Building Presidio's recognizers takes seconds; one detector serves every export of this process.
    from controlplane.detectors.pii import PiiDetector

    return PiiDetector()


def _filter() -> queries.FlaggedFilter:
    pairs = queries.app_models(common.engine())
    labels = ["all"] + [f"{app} / {model}" for app, model in pairs]
    first, second, third = st.columns(3)
    pair = first.selectbox("App / model", labels, key="flagged_pair")
    detector = second.selectbox("Detector", ["any", "pii", "toxicity"], key="flagged_detector")
    label = third.selectbox("Review label", list(LABEL_FILTERS), key="flagged_label")
    fourth, fifth = st.columns([1, 2])
    with fourth:
        since, until = common.time_range("flagged_range", default="Last 7 days")
    text = fifth.text_input("Text in prompt or completion", key="flagged_text")
    app, model = (None, None) if pair == "all" else pairs[labels.index(pair) - 1]
    return queries.FlaggedFilter(app=app, model=model, detector=None if detector == "any" else detector,
                                 label=LABEL_FILTERS[label], since=since, until=until, text=text.strip())


def _table(page: queries.Page) -> None:
    rows = page.rows
    table = pd.DataFrame({
        "id": rows["id"], "time (UTC)": rows["event_time"], "app": rows["app"], "model": rows["model"],
        "detectors": rows["detectors"].map(common.span_summary), "label": rows["label"].fillna(""),
        "corrected": rows["has_correction"].astype(bool), "prompt": rows["prompt_excerpt"],
    })
    st.dataframe(table, hide_index=True)
    st.caption(f"Rows {page.offset + 1}–{page.offset + len(rows)} of {page.total:,}")


def _review(ids: list[int]) -> None:
    st.subheader("Read and label")
    chosen = st.selectbox("Interaction", ids, format_func=lambda i: f"#{i}", key="flagged_review_id")
    row = queries.get_flagged(common.engine(), [chosen])[0]
    st.caption(f"{row['app']} / {row['model']}, {row['event_time']:%Y-%m-%d %H:%M:%S} UTC, event {row['event_id']}, "
               f"label: {row['label'] or 'none'}")
    left, right = st.columns(2)
    with left:
        st.markdown("**Prompt**")
        common.show_highlighted(row["prompt"], row["detectors"], "prompt")
    with right:
        st.markdown("**Completion**")
        common.show_highlighted(row["completion"], row["detectors"], "completion")
    _label_form(row)


def _label_form(row: dict) -> None:
    user = common.current_user()
    with st.form(f"label_{row['id']}"):
        label = st.radio("The completion is", list(queries.LABELS), horizontal=True,
                         index=list(queries.LABELS).index(row["label"]) if row["label"] in queries.LABELS else 0)
        correction = st.text_area("Correction (the completion it should have been)", value=row["correction"] or "")
        if st.form_submit_button("Save label", disabled=not user.can_act):
            try:
                actions.label_flagged(common.engine(), [row["id"]], label, correction, user)
            except (ControlPlaneError, ValueError) as exc:
                st.error(str(exc))
                return
            common.flash(f"Interaction #{row['id']} labelled {label}.")
            st.rerun()
    if not user.can_act:
        st.caption("Viewers can read interactions; log in as an operator to label them.")


def _export(flt: queries.FlaggedFilter, page_ids: list[int], total: int) -> None:
    st.subheader("Export")
    limit = min(total, queries.MAX_EXPORT_ROWS)
    scope = st.radio("Rows", ["chosen rows of this page", f"all {limit:,} rows matching the filters"], key="flagged_export_scope")
    chosen = st.multiselect("Chosen rows", page_ids, format_func=lambda i: f"#{i}", key="flagged_export_ids",
                            disabled=scope.startswith("all"))
    fmt = st.selectbox("Format", list(FORMATS), key="flagged_export_format")
    scrub = st.checkbox("Replace personal data with placeholders", value=True, key="flagged_export_scrub",
                        help="Unscrubbed exports are for operators only and are recorded in the audit log.")
    if st.button("Prepare export", key="flagged_export_prepare"):
        ids = queries.flagged_ids(common.engine(), flt) if scope.startswith("all") else chosen
        if not ids:
            st.error("Choose at least one row to export.")
        else:
            _prepare(ids, fmt, scrub)
    prepared = st.session_state.get(EXPORT_KEY)
    if prepared is not None:
        st.download_button(f"Download {prepared.name}", prepared.data, file_name=prepared.name, key="flagged_export_download")
        replaced = ", ".join(f"{name} {n}" for name, n in prepared.pii_replaced.items()) or "none found"
        st.caption(f"{prepared.rows} rows; personal data {'replaced: ' + replaced if prepared.scrubbed else 'NOT scrubbed'}.")


def _prepare(ids: list[int], fmt: str, scrub: bool) -> None:
    try:
        with st.spinner("Writing the export…"):
            detector = _pii_detector() if scrub else None
            st.session_state[EXPORT_KEY] = actions.export_flagged_ids(
                common.engine(), ids, fmt, common.current_user(), scrub=scrub, pii_detector=detector
            )
    except (ControlPlaneError, ValueError) as exc:
        st.session_state.pop(EXPORT_KEY, None)
        st.error(str(exc))


def render() -> None:
    """Draw the flagged interactions page."""
    st.title("Flagged interactions")
    common.show_flash()
    flt = _filter()
    total = queries.list_flagged(common.engine(), flt, limit=1).total
    if total == 0:
        st.info("No flagged interaction matches these filters.")
        return
    offset = common.page_offset(total, PAGE_SIZE, "flagged_page")
    page = queries.list_flagged(common.engine(), flt, offset=offset, limit=PAGE_SIZE)
    _table(page)
    ids = [int(value) for value in page.rows["id"]]
    _review(ids)
    _export(flt, ids, total)


render()
