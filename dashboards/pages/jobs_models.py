"""Jobs & models: job runs with their status and output, evaluation reports side by side, promote and roll back."""

import math
from typing import Callable

import streamlit as st

from controlplane.auth import User
from controlplane.errors import ControlPlaneError
from controlplane.jobs import JOB_STATUSES
from controlplane.store import actions, loop_queries
from dashboards.pages import common

PAGE_SIZE = 25
PENDING_KEY = "jobs_models_pending_change"
JOB_CHANGES = {"awaiting_approval": ["approve", "cancel"], "pending": ["cancel"], "running": ["cancel"], "failed": ["retry"]}


def _act(done: str, action: Callable[[User], object]) -> None:
    st.session_state.pop(PENDING_KEY, None)
    try:
        action(common.current_user())
    except (ControlPlaneError, ValueError) as exc:
        st.error(str(exc))
        return
    common.flash(done)
    st.rerun()


def _jobs() -> None:
    st.subheader("Jobs")
    engine = common.engine()
    first, second = st.columns(2)
    statuses = first.multiselect("Status", list(JOB_STATUSES), key="jobs_status")
    kind = second.selectbox("Kind", ["all", *loop_queries.job_kinds(engine)], key="jobs_kind")
    kind = None if kind == "all" else kind
    total = loop_queries.list_jobs(engine, statuses, kind, limit=1).total
    if total == 0:
        st.info("No jobs yet. Alert policies and the nightly curation create them; `controlplane jobs` lists them too.")
        return
    offset = common.page_offset(total, PAGE_SIZE, "jobs_page")
    page = loop_queries.list_jobs(engine, statuses, kind, offset=offset, limit=PAGE_SIZE)
    st.dataframe(page.rows, hide_index=True)
    st.caption(f"Jobs {offset + 1}–{offset + len(page.rows)} of {total}")
    _job_detail([int(value) for value in page.rows["id"]])


def _job_detail(ids: list[int]) -> None:
    job_id = st.selectbox("Job", ids, format_func=lambda i: f"#{i}", key="jobs_detail_id")
    job = loop_queries.job_detail(common.engine(), job_id)
    if job is None:
        return
    st.write(f"**{job['kind']}** job #{job_id} is **{job['status']}**, attempt {job['attempts']} of {job['max_attempts']}.")
    left, right = st.columns(2)
    left.markdown("**Parameters**")
    left.json(job["params"] or {})
    right.markdown("**Result**")
    right.json(job["result"] or {})
    if job["error"]:
        st.markdown("**Error**")
        st.code(job["error"], language=None)
    user = common.current_user()
    for change in JOB_CHANGES.get(job["status"], []):
        if st.button(f"{change.capitalize()} job #{job_id}", disabled=not user.can_act, key=f"jobs_{change}"):
            _act(f"Job {job_id}: {change} done.", lambda who, c=change: actions.change_job(common.engine(), job_id, c, who))


def _reports() -> None:
    st.subheader("Evaluation reports")
    reports = loop_queries.list_evaluation_reports(common.engine())
    if reports.empty:
        st.info("No evaluation reports yet: the evaluation gate writes one per fine-tuned adapter.")
        return
    labels = {int(row.id): f"report {row.id}: {row.name} v{row.version} ({'passed' if row.passed else 'failed'})"
              for row in reports.itertuples()}
    chosen = st.multiselect("Reports to compare", list(labels), default=list(labels)[:2], format_func=labels.get, key="reports_chosen")
    if not chosen:
        return
    selected = reports[reports["id"].isin(chosen)]
    # Metrics mix numbers, flags and paths, so every cell is shown as text.
    st.dataframe(loop_queries.compare_reports(selected).map(_cell))
    for report in selected.itertuples():
        with st.expander(f"Gate reasons of report {report.id}"):
            for reason in report.reasons or []:
                st.write(("✅ " if reason.startswith("passed") else "❌ ") + reason)


def _cell(value: object) -> str:
    # NaN marks a metric that this report does not have.
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "—"
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def _models() -> None:
    st.subheader("Adapters")
    engine = common.engine()
    models = loop_queries.list_model_versions(engine)
    if models.empty:
        st.info("No adapters yet: a fine-tuning job registers one when it finishes.")
        return
    st.dataframe(models, hide_index=True)
    promotions = loop_queries.list_promotions(engine)
    if not promotions.empty:
        st.markdown("**Promotions and rollbacks**")
        st.dataframe(promotions, hide_index=True)
    _promote(models)
    _rollback(models)


def _promote(models) -> None:
    candidates = models[models["status"].isin(["candidate", "retired"])]
    if candidates.empty:
        return
    labels = {int(row.id): f"{row.name} v{row.version} ({row.status})" for row in candidates.itertuples()}
    model_id = st.selectbox("Adapter to promote", list(labels), format_func=labels.get, key="models_promote_id")
    reason = st.text_input("Reason for the promotion", key="models_promote_reason")
    _confirmed_action(
        "promote", model_id, button="Promote…", confirm="Confirm promotion",
        question=f"Promote {labels[model_id]}? It replaces the adapter now in use for its name.",
        done=f"Promoted {labels[model_id]}.",
        run=lambda who: actions.promote_model(common.engine(), model_id, who, reason),
    )


def _rollback(models) -> None:
    names = sorted(set(models.loc[models["status"] == "promoted", "name"]))
    if not names:
        return
    name = st.selectbox("Adapter name to roll back", names, key="models_rollback_name")
    reason = st.text_input("Reason for the rollback", key="models_rollback_reason")
    _confirmed_action(
        "rollback", name, button="Roll back…", confirm="Confirm rollback",
        question=f"Roll back {name}? The adapter promoted before the current one comes back, and the current one is rejected.",
        done=f"Rolled back {name}.",
        run=lambda who: actions.rollback_model(common.engine(), name, who, reason),
    )


def _confirmed_action(action: str, target, *, button: str, confirm: str, question: str, done: str, run) -> None:
    # A first click records the pending action; it runs only after the confirm button.
    if st.button(button, disabled=not common.current_user().can_act, key=f"models_{action}"):
        st.session_state[PENDING_KEY] = (action, target)
    if st.session_state.get(PENDING_KEY) != (action, target):
        return
    st.warning(question)
    yes, no = st.columns(2)
    if yes.button(confirm, type="primary", key=f"models_{action}_confirm"):
        _act(done, run)
    if no.button("Cancel", key=f"models_{action}_cancel"):
        st.session_state.pop(PENDING_KEY, None)
        st.rerun()


def render() -> None:
    """Draw the jobs and models page."""
    st.title("Jobs & models")
    common.show_flash()
    _jobs()
    _reports()
    _models()


render()
