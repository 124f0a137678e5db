"""Jobs on a migrated SQLite file: the state machine, leases, the registry and the runner."""

from __future__ import annotations

import itertools
import threading
import time
from datetime import timedelta

import pytest
from sqlalchemy import select

from controlplane import jobs
from controlplane.errors import ConfigurationError, ControlPlaneError
from controlplane.settings import Settings
from controlplane.store.engine import make_engine, transaction
from controlplane.store.migrate import upgrade
from controlplane.store.models import Job, utcnow
from controlplane.windows import as_utc

LEGAL = {
    ("awaiting_approval", "pending"),
    ("awaiting_approval", "cancelled"),
    ("pending", "running"),
    ("pending", "cancelled"),
    ("running", "succeeded"),
    ("running", "failed"),
    ("running", "cancelled"),
    ("failed", "pending"),
}
ALL_PAIRS = list(itertools.product(jobs.JOB_STATUSES, repeat=2))


@pytest.fixture
def engine(tmp_path):
    url = f"sqlite:///{tmp_path / 'jobs.db'}"
    upgrade(url)
    engine = make_engine(url)
    yield engine
    engine.dispose()


@pytest.fixture
def settings(tmp_path) -> Settings:
    return Settings(database_url=f"sqlite:///{tmp_path / 'jobs.db'}", job_lease_seconds=30, job_max_attempts=2)


def new_job(engine, kind: str = "unit_echo", **fields) -> int:
    with transaction(engine) as session:
        return jobs.create_job(session, kind, max_attempts=fields.pop("max_attempts", 2), **fields).id


def load(engine, job_id: int) -> Job:
    with transaction(engine) as session:
        return session.get(Job, job_id)


def echo(context: jobs.JobContext) -> dict:
    return {"echo": context.params.get("value"), "attempt": context.attempt}


def boom(context: jobs.JobContext) -> dict:
    raise ValueError("boom")


jobs.register_job_kind("unit_echo", echo)
jobs.register_job_kind("unit_boom", boom)


@pytest.mark.parametrize(("source", "target"), ALL_PAIRS)
def test_transition_table(source, target):
    job = Job(id=7, kind="curation", status=source)
    if (source, target) in LEGAL:
        jobs.check_transition(job, target)
        return
    with pytest.raises(ControlPlaneError) as error:
        jobs.check_transition(job, target)
    assert f"from {source} to {target}" in str(error.value)
    assert "job 7" in str(error.value)


def test_create_job_with_approval_waits(engine):
    job_id = new_job(engine, requires_approval=True, created_by="alice")
    job = load(engine, job_id)
    assert job.status == "awaiting_approval"
    assert job.created_by == "alice"
    assert jobs.claim_job(engine, "runner", lease_seconds=30) is None


def test_approve_records_who_and_when(engine):
    job_id = new_job(engine, requires_approval=True)
    with transaction(engine) as session:
        jobs.approve_job(session, job_id, "bob")
    job = load(engine, job_id)
    assert job.status == "pending"
    assert job.approved_by == "bob"
    assert job.approved_at is not None


def test_approve_pending_job_is_rejected(engine):
    job_id = new_job(engine)
    with pytest.raises(ControlPlaneError, match="cannot go from pending to pending"):
        with transaction(engine) as session:
            jobs.approve_job(session, job_id, "bob")


def test_missing_job_is_reported(engine):
    with pytest.raises(ControlPlaneError, match="job 999 not found"):
        with transaction(engine) as session:
            jobs.get_job(session, 999)


def test_claim_takes_oldest_pending_job(engine):
    first, second = new_job(engine), new_job(engine)
    claimed = jobs.claim_job(engine, "runner-a", lease_seconds=30)
    assert claimed.id == first
    job = load(engine, first)
    assert (job.status, job.lease_owner, job.attempts) == ("running", "runner-a", 1)
    assert as_utc(job.lease_expires_at) > utcnow() + timedelta(seconds=25)
    assert jobs.claim_job(engine, "runner-b", lease_seconds=30).id == second


def test_claim_skips_job_with_live_lease(engine):
    new_job(engine)
    jobs.claim_job(engine, "runner-a", lease_seconds=30)
    assert jobs.claim_job(engine, "runner-b", lease_seconds=30) is None


def test_claim_takes_job_after_lease_expires(engine):
    job_id = new_job(engine)
    jobs.claim_job(engine, "runner-a", lease_seconds=30)
    later = utcnow() + timedelta(seconds=31)
    claimed = jobs.claim_job(engine, "runner-b", lease_seconds=30, now=later)
    assert claimed.id == job_id
    job = load(engine, job_id)
    assert (job.status, job.lease_owner, job.attempts) == ("running", "runner-b", 2)


def test_running_job_without_lease_is_claimable(engine):
    job_id = new_job(engine)
    with transaction(engine) as session:
        session.get(Job, job_id).status = "running"
    claimed = jobs.claim_job(engine, "runner-a", lease_seconds=30)
    assert claimed.id == job_id
    assert load(engine, job_id).lease_owner == "runner-a"


def test_expired_last_attempt_fails_job(engine):
    job_id = new_job(engine, max_attempts=1)
    jobs.claim_job(engine, "runner-a", lease_seconds=30)
    later = utcnow() + timedelta(seconds=31)
    assert jobs.claim_job(engine, "runner-b", lease_seconds=30, now=later) is None
    job = load(engine, job_id)
    assert job.status == "failed"
    assert "lease of runner-a expired" in job.error
    assert "attempt 1 of 1" in job.error


def test_register_same_function_twice_is_noop():
    jobs.register_job_kind("unit_echo", echo)
    assert jobs.job_function("unit_echo") is echo


def test_register_other_function_for_kind_is_rejected():
    with pytest.raises(ControlPlaneError, match="already registered"):
        jobs.register_job_kind("unit_echo", boom)


def test_unknown_kind_names_the_setting():
    with pytest.raises(ControlPlaneError) as error:
        jobs.job_function("unit_unknown_kind")
    assert "unit_unknown_kind" in str(error.value)
    assert "CONTROLPLANE_JOB_PLUGINS" in str(error.value)


def test_builtin_notify_kind_resolves():
    from controlplane.alerting.outbox import run_notify_job

    assert "notify" in jobs.registered_job_kinds()
    assert jobs.job_function("notify") is run_notify_job


def test_missing_plugin_module_is_configuration_error():
    with pytest.raises(ConfigurationError) as error:
        jobs.load_job_plugins(["controlplane.no_such_plugin"])
    assert "controlplane.no_such_plugin" in str(error.value)
    assert "CONTROLPLANE_JOB_PLUGINS" in str(error.value)


@pytest.mark.parametrize(
    ("kind", "status", "error", "result"),
    [
        ("unit_echo", "succeeded", None, {"echo": 42, "attempt": 1}),
        ("unit_boom", "failed", "ValueError: boom", {}),
        ("unit_not_registered", "failed", "no function is registered for job kind 'unit_not_registered'", {}),
    ],
)
def test_run_records_outcome(engine, settings, kind, status, error, result):
    job_id = new_job(engine, kind, params={"value": 42})
    finished = jobs.run_pending_jobs(engine, settings, "runner")
    job = load(engine, job_id)
    assert [item.id for item in finished] == [job_id]
    assert job.status == status
    assert (job.error or "").startswith(error or "")
    assert job.result == result
    assert job.lease_owner is None
    assert job.finished_at is not None


def test_success_creates_follow_up_job(engine, settings):
    then = {"job": "unit_echo", "requires_approval": True, "params": {"value": 1}}
    parent_id = new_job(engine, params={"app": "assistant", "model": "m1", "then": then}, policy="curate")
    jobs.run_pending_jobs(engine, settings, "runner")
    with transaction(engine) as session:
        child = session.scalars(select(Job).where(Job.parent_job_id == parent_id)).one()
        assert child.status == "awaiting_approval"
        assert child.created_by == f"job:{parent_id}"
        assert child.policy == "curate"
        assert child.params["app"] == "assistant"
        assert child.params["value"] == 1
        assert child.params["parent_result"] == {"echo": None, "attempt": 1}


def test_failure_creates_no_follow_up(engine, settings):
    then = {"job": "unit_echo", "requires_approval": False, "params": {}}
    parent_id = new_job(engine, "unit_boom", params={"then": then})
    jobs.run_pending_jobs(engine, settings, "runner")
    with transaction(engine) as session:
        assert session.scalars(select(Job).where(Job.parent_job_id == parent_id)).all() == []


def test_cancel_while_running_keeps_cancelled(engine, settings):
    def cancel_myself(context: jobs.JobContext) -> dict:
        with transaction(context.engine) as session:
            jobs.cancel_job(session, context.job_id, "carol")
        return {"partial": True}

    jobs.register_job_kind("unit_cancel_myself", cancel_myself)
    job_id = new_job(engine, "unit_cancel_myself")
    jobs.run_pending_jobs(engine, settings, "runner")
    job = load(engine, job_id)
    assert job.status == "cancelled"
    assert job.cancelled_by == "carol"
    assert job.result == {"partial": True}


def test_retry_failed_job_resets_attempts(engine, settings):
    job_id = new_job(engine, "unit_boom")
    jobs.run_pending_jobs(engine, settings, "runner")
    with transaction(engine) as session:
        jobs.retry_job(session, job_id, "dave")
    job = load(engine, job_id)
    assert (job.status, job.attempts) == ("pending", 0)


def test_runner_renews_lease_while_function_runs(engine, tmp_path):
    settings = Settings(database_url=str(engine.url), job_lease_seconds=1.5)
    observed: dict = {}

    def wait_for_renewal(context: jobs.JobContext) -> dict:
        first = load(context.engine, context.job_id).lease_expires_at
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and load(context.engine, context.job_id).lease_expires_at == first:
            time.sleep(0.1)
        observed["renewed"] = load(context.engine, context.job_id).lease_expires_at != first
        observed["other_claim"] = jobs.claim_job(context.engine, "other-runner", lease_seconds=30)
        return {}

    jobs.register_job_kind("unit_wait_for_renewal", wait_for_renewal)
    job_id = new_job(engine, "unit_wait_for_renewal")
    jobs.run_pending_jobs(engine, settings, "runner")
    assert observed["renewed"] is True
    assert observed["other_claim"] is None
    assert load(engine, job_id).status == "succeeded"


def test_lost_lease_sets_stop_flag(engine):
    settings = Settings(database_url=str(engine.url), job_lease_seconds=1.5)
    stopped = threading.Event()

    def cancelled_elsewhere(context: jobs.JobContext) -> dict:
        with transaction(context.engine) as session:
            jobs.cancel_job(session, context.job_id, "erin")
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and not context.should_stop():
            time.sleep(0.05)
        if context.should_stop():
            stopped.set()
        return {}

    jobs.register_job_kind("unit_cancelled_elsewhere", cancelled_elsewhere)
    new_job(engine, "unit_cancelled_elsewhere")
    jobs.run_pending_jobs(engine, settings, "runner")
    assert stopped.is_set()
