"""The scheduler, jobs, notifications and policies against SQLite and PostgreSQL.

Scheduler processes are real `python -m controlplane scheduler` subprocesses. They import this
module as a job plugin (CONTROLPLANE_JOB_PLUGINS), which registers the small job kinds below.
The webhook receiver is an HTTP server this test starts on 127.0.0.1.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from datetime import datetime, timedelta, timezone
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Callable, Iterator

import pytest
from sqlalchemy import create_engine, inspect, select

from controlplane import jobs
from controlplane.alerting import create_silence, open_or_update_alert, resolve, send_due_notifications
from controlplane.alerting.payloads import ZERO_TIME
from controlplane.policies import evaluate_job_rules
from controlplane.settings import Settings
from controlplane.store.engine import make_engine, transaction
from controlplane.store.migrate import downgrade, upgrade
from controlplane.store.models import (
    Alert, Finding, FlaggedInteraction, Job, Notification, NotificationAttempt, ScheduledRun, SchedulerLease, utcnow,
)
from controlplane.windows import as_utc

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
T0 = datetime(2026, 12, 1, 10, 0, tzinfo=timezone.utc)


# ----- job kinds the scheduler subprocesses load from this module -----


def slow_first_attempt(context: jobs.JobContext) -> dict:
    """Block on the first attempt until stopped (the test kills the process), and succeed on later ones."""
    if context.attempt == 1:
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline and not context.should_stop():
            time.sleep(0.2)
    return {"attempt": context.attempt, "owner": context.owner}


def curate_for_test(context: jobs.JobContext) -> dict:
    return {"dataset": f"{context.params['app']}/{context.params['model']}", "since": context.params["since"]}


def fine_tune_for_test(context: jobs.JobContext) -> dict:
    return {"trained_on": context.params["parent_result"]["dataset"]}


jobs.register_job_kind("test_slow_first_attempt", slow_first_attempt)
jobs.register_job_kind("test_curation", curate_for_test)
jobs.register_job_kind("test_fine_tune", fine_tune_for_test)


# ----- helpers -----


def wait_for(condition: Callable[[], bool], timeout_s: float, what: str, logs: Callable[[], str] = lambda: "") -> None:
    """Poll `condition` until it holds, or fail naming `what` and showing the scheduler logs."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(0.25)
    raise AssertionError(f"timed out after {timeout_s:.0f}s waiting for {what}\n--- scheduler logs (tail) ---\n{logs()[-6000:]}")


class SchedulerProcess:
    """A `controlplane scheduler` subprocess with its own log file."""

    def __init__(self, env: dict[str, str], log_path: Path) -> None:
        self.env = env
        self.log_path = log_path
        self.process: subprocess.Popen | None = None

    def start(self) -> "SchedulerProcess":
        with self.log_path.open("ab") as log:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "controlplane", "scheduler"], env=self.env, cwd=REPO, stdout=log, stderr=subprocess.STDOUT
            )
        return self

    @property
    def pid(self) -> int:
        return self.process.pid

    def kill(self) -> None:
        """SIGKILL: no lease release, no clean-up."""
        if self.process.poll() is None:
            self.process.kill()
        self.process.wait(timeout=30)

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=30)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""


@pytest.fixture
def scheduler_env(database_url: str, tmp_path: Path) -> dict[str, str]:
    """Environment of a scheduler with a 1 s heartbeat, a 3 s lease, and the other tasks hourly."""
    policy = tmp_path / "policy.yaml"
    policy.write_text("version: 1\nalert_rules:\n  - name: everything\n")
    env = {key: value for key, value in os.environ.items() if not key.startswith("CONTROLPLANE_")}
    env.update(
        {
            "CONTROLPLANE_DATABASE_URL": database_url,
            "CONTROLPLANE_POLICY_FILE": str(policy),
            "CONTROLPLANE_JOB_PLUGINS": json.dumps(["tests.integration.test_scheduler"]),
            "CONTROLPLANE_HEARTBEAT_INTERVAL_SECONDS": "1",
            "CONTROLPLANE_SCHEDULER_LEASE_SECONDS": "3",
            "CONTROLPLANE_SCHEDULER_RENEW_SECONDS": "1",
            "CONTROLPLANE_POLICY_INTERVAL_SECONDS": "3600",
            "CONTROLPLANE_JOB_RUNNER_INTERVAL_SECONDS": "3600",
            "CONTROLPLANE_NOTIFY_INTERVAL_SECONDS": "3600",
            "CONTROLPLANE_RETENTION_INTERVAL_SECONDS": "3600",
            "CONTROLPLANE_REFERENCE_REFRESH_INTERVAL_SECONDS": "3600",
            "CONTROLPLANE_NIGHTLY_CURATION": "false",
        }
    )
    return env


@pytest.fixture
def start_scheduler(scheduler_env: dict[str, str], tmp_path: Path) -> Iterator[Callable[..., SchedulerProcess]]:
    """Start scheduler subprocesses for this test and stop all of them at the end."""
    started: list[SchedulerProcess] = []

    def start(name: str, **overrides: str) -> SchedulerProcess:
        env = {**scheduler_env, **overrides}
        process = SchedulerProcess(env, tmp_path / f"{name}.log").start()
        started.append(process)
        return process

    yield start
    for process in started:
        process.stop()


@pytest.fixture
def reader(database_url: str) -> Iterator:
    """A plain engine for the test's reads, apart from the scheduler's connections."""
    engine = create_engine(database_url)
    yield engine
    engine.dispose()


def heartbeats(reader) -> list[ScheduledRun]:
    with transaction(reader) as session:
        return list(session.scalars(select(ScheduledRun).where(ScheduledRun.name == "heartbeat").order_by(ScheduledRun.scheduled_for)))


def lease_owner(reader) -> str | None:
    with transaction(reader) as session:
        lease = session.get(SchedulerLease, "scheduler")
        return lease.owner if lease else None


def pid_of(owner: str) -> int:
    return int(owner.split(":")[1])


# ----- one active scheduler -----


def test_two_schedulers_run_each_slot_once(start_scheduler, reader):
    first, second = start_scheduler("first"), start_scheduler("second")
    logs = lambda: first.log() + "\n--- second ---\n" + second.log()  # noqa: E731
    wait_for(lambda: sum(run.status == "succeeded" for run in heartbeats(reader)) >= 5, 90, "five heartbeats", logs)

    leader_owner = lease_owner(reader)
    leader, standby = (first, second) if pid_of(leader_owner) == first.pid else (second, first)
    assert pid_of(leader_owner) == leader.pid
    assert {run.owner for run in heartbeats(reader)} == {leader_owner}

    leader.kill()
    killed_at = utcnow()
    wait_for(
        lambda: sum(pid_of(run.owner) == standby.pid and run.status == "succeeded" for run in heartbeats(reader)) >= 3,
        90, "three heartbeats from the standby", logs,
    )
    standby.stop()

    runs = heartbeats(reader)
    slots = [as_utc(run.scheduled_for) for run in runs]
    assert len(slots) == len(set(slots))
    assert [later - earlier for earlier, later in zip(slots, slots[1:])] == [timedelta(seconds=1)] * (len(slots) - 1)
    assert {run.status for run in runs} <= {"succeeded", "coalesced", "interrupted"}
    taken_over = [run for run in runs if as_utc(run.scheduled_for) > killed_at and run.status == "succeeded"]
    assert {pid_of(run.owner) for run in taken_over} == {standby.pid}
    assert sum(run.status == "coalesced" for run in runs) >= 1
    assert pid_of(lease_owner(reader)) == standby.pid


# ----- a job whose process died -----


def test_killed_job_is_claimed_again(start_scheduler, reader, database_url):
    engine = make_engine(database_url)
    with transaction(engine) as session:
        job_id = jobs.create_job(session, "test_slow_first_attempt", created_by="test", max_attempts=3).id
    engine.dispose()
    fast_jobs = {"CONTROLPLANE_JOB_RUNNER_INTERVAL_SECONDS": "1", "CONTROLPLANE_JOB_LEASE_SECONDS": "2"}

    def job() -> Job:
        with transaction(reader) as session:
            return session.get(Job, job_id)

    first = start_scheduler("first", **fast_jobs)
    wait_for(lambda: job().status == "running", 90, "the first claim", first.log)
    owner_first = job().lease_owner
    assert pid_of(owner_first) == first.pid
    first.kill()
    assert (job().status, job().lease_owner, job().attempts) == ("running", owner_first, 1)

    second = start_scheduler("second", **fast_jobs)
    wait_for(lambda: job().status == "succeeded", 90, "the job to succeed on its second claim", second.log)
    finished = job()
    assert finished.attempts == 2
    assert finished.result["attempt"] == 2
    assert pid_of(finished.result["owner"]) == second.pid
    assert finished.lease_owner is None


# ----- webhook notifications -----


class Receiver:
    """An HTTP server on 127.0.0.1 that fails the first request with 503 and accepts the rest."""

    def __init__(self) -> None:
        self.bodies: list[dict] = []
        self.paths: list[str] = []
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 - the name http.server dispatches to
                length = int(self.headers["Content-Length"])
                receiver.bodies.append(json.loads(self.rfile.read(length)))
                receiver.paths.append(self.path)
                self.send_response(503 if len(receiver.bodies) == 1 else 200)
                self.end_headers()

            def log_message(self, *_args) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}/hooks/controlplane?token=s3cret"

    def __enter__(self) -> "Receiver":
        self.thread.start()
        return self

    def __exit__(self, *_exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()


def add_finding(session, kind="safety", subject="flagged_rate", app="assistant", model="m1", severity="warning", minute=0) -> Finding:
    start = T0 + timedelta(minutes=minute)
    finding = Finding(
        kind=kind, subject=subject, app=app, model=model, window_start=start, window_end=start + timedelta(minutes=1),
        severity=severity, summary=f"{subject} of {app}/{model} above the reference", sample_size=100, test=None,
        score=None, threshold=None, details={},
    )
    session.add(finding)
    session.flush()
    return finding


def send_until(engine, settings: Settings, notification_id: int, status: str) -> None:
    def sent() -> bool:
        send_due_notifications(engine, settings)
        with transaction(engine) as session:
            return session.get(Notification, notification_id).status == status

    wait_for(sent, 30, f"notification {notification_id} to be {status}")


@pytest.mark.parametrize("body_format", ["json", "alertmanager"])
def test_webhook_retries_until_delivered(database_url, tmp_path, body_format):
    policy = tmp_path / "policy.yaml"
    policy.write_text("version: 1\nalert_rules:\n  - name: safety-rate\n    match: {kind: safety}\n")
    engine = make_engine(database_url)
    with Receiver() as receiver:
        settings = Settings(
            database_url=database_url, policy_file=policy, webhook_url=receiver.url, webhook_format=body_format,
            webhook_receiver="oncall", notify_backoff_seconds=0.2, notify_cooldown_seconds=0,
            external_url="http://127.0.0.1:8501",
        )
        with transaction(engine) as session:
            alert = open_or_update_alert(session, add_finding(session), settings=settings)
            firing_id = session.scalars(select(Notification.id).where(Notification.alert_id == alert.id)).one()
        send_until(engine, settings, firing_id, "sent")

        with transaction(engine) as session:
            attempts = session.scalars(select(NotificationAttempt).order_by(NotificationAttempt.id)).all()
            assert [(a.attempt, a.status_code, a.succeeded) for a in attempts] == [(1, 503, False), (2, 200, True)]
            assert {a.receiver_host for a in attempts} == {receiver.url.split("/hooks")[0]}
            assert all(a.body_format == body_format for a in attempts)
        assert len(receiver.bodies) == 2
        assert receiver.bodies[0] == receiver.bodies[1]
        assert receiver.paths[0] == "/hooks/controlplane?token=s3cret"
        check_firing_body(receiver.bodies[-1], alert, body_format)

        with transaction(engine) as session:
            resolve(session, alert.id, "alice", settings=settings)
            resolved_id = session.scalars(
                select(Notification.id).where(Notification.alert_id == alert.id, Notification.event == "resolved")
            ).one()
        send_until(engine, settings, resolved_id, "sent")
        check_resolved_body(receiver.bodies[-1], body_format)
    engine.dispose()


def check_firing_body(body: dict, alert: Alert, body_format: str) -> None:
    if body_format == "json":
        assert (body["version"], body["source"], body["receiver"], body["status"]) == ("1", "controlplane", "oncall", "firing")
        assert body["group_key"] == alert.group_key
        [item] = body["alerts"]
        assert (item["id"], item["event"], item["status"], item["fingerprint"]) == (alert.id, "firing", "firing", alert.fingerprint)
        assert (item["app"], item["model"], item["kind"], item["subject"]) == ("assistant", "m1", "safety", "flagged_rate")
        assert item["url"] == f"http://127.0.0.1:8501/alerts?alert_id={alert.id}"
        return
    assert (body["version"], body["receiver"], body["status"], body["truncatedAlerts"]) == ("4", "oncall", "firing", 0)
    assert body["groupKey"] == '{}:{app="assistant", kind="safety", model="m1"}'
    assert body["groupLabels"] == {"app": "assistant", "kind": "safety", "model": "m1"}
    assert body["externalURL"] == "http://127.0.0.1:8501"
    [item] = body["alerts"]
    assert item["status"] == "firing"
    assert item["labels"]["alertname"] == "safety-rate"
    assert item["labels"]["severity"] == "warning"
    assert item["annotations"]["summary"] == "flagged_rate of assistant/m1 above the reference"
    assert item["endsAt"] == ZERO_TIME
    assert item["fingerprint"] == alert.fingerprint
    assert item["startsAt"].endswith("Z")


def check_resolved_body(body: dict, body_format: str) -> None:
    assert body["status"] == "resolved"
    [item] = body["alerts"]
    if body_format == "json":
        assert (item["event"], item["status"], item["resolved_by"]) == ("resolved", "resolved", "alice")
        return
    assert item["status"] == "resolved"
    assert item["endsAt"] != ZERO_TIME


# ----- policy to job -----

POLICY = """
version: 1
alert_rules:
  - name: safety-rate
    match: {kind: safety}
    min_severity: warning
job_rules:
  - name: curate-flagged
    match: {kind: safety}
    job: test_curation
    min_flagged_interactions: 20
    max_concurrent: 2
    max_per_day: 1
    then: {job: test_fine_tune, requires_approval: true}
"""


def flag_interactions(session, app: str, model: str, count: int) -> None:
    now = utcnow()
    for index in range(count):
        session.add(
            FlaggedInteraction(
                event_id=f"{app}-{model}-{index}", app=app, model=model, event_time=now, detectors=[{"detector": "pii"}],
                prompt="send it to alice@example.org", completion="done", created_at=now,
            )
        )


def open_flagged_alert(engine, settings: Settings, app: str, model: str, minute: int) -> int:
    with transaction(engine) as session:
        flag_interactions(session, app, model, 25)
        return open_or_update_alert(session, add_finding(session, app=app, model=model, minute=minute), settings=settings).id


def jobs_of(engine, alert_id: int) -> list[Job]:
    with transaction(engine) as session:
        return list(session.scalars(select(Job).where(Job.alert_id == alert_id).order_by(Job.id)))


def test_policy_turns_alert_into_jobs(database_url, tmp_path):
    policy = tmp_path / "policy.yaml"
    policy.write_text(POLICY)
    settings = Settings(database_url=database_url, policy_file=policy, job_lease_seconds=30)
    engine = make_engine(database_url)

    flagged_alert = open_flagged_alert(engine, settings, "assistant", "m1", minute=0)
    with transaction(engine) as session:
        create_silence(session, created_by="alice", duration=timedelta(hours=2), app="billing", comment="migration")
    silenced_alert = open_flagged_alert(engine, settings, "billing", "m1", minute=1)
    first = evaluate_job_rules(engine, settings)
    assert len(first.created) == 1
    assert dict(first.skipped) == {"silenced": 1}
    assert jobs_of(engine, silenced_alert) == []

    jobs.run_pending_jobs(engine, settings, "test-runner")
    curation, fine_tune = jobs_of(engine, flagged_alert)
    assert (curation.kind, curation.status, curation.policy) == ("test_curation", "succeeded", "curate-flagged")
    assert curation.result["dataset"] == "assistant/m1"
    assert (fine_tune.kind, fine_tune.status, fine_tune.parent_job_id) == ("test_fine_tune", "awaiting_approval", curation.id)

    with transaction(engine) as session:
        jobs.approve_job(session, fine_tune.id, "bob")
    jobs.run_pending_jobs(engine, settings, "test-runner")
    [_, fine_tune] = jobs_of(engine, flagged_alert)
    assert (fine_tune.status, fine_tune.approved_by, fine_tune.result) == ("succeeded", "bob", {"trained_on": "assistant/m1"})

    capped_alert = open_flagged_alert(engine, settings, "assistant", "m2", minute=2)
    second = evaluate_job_rules(engine, settings)
    assert second.created == []
    assert dict(second.skipped) == {"already_started": 1, "silenced": 1, "max_per_day": 1}
    assert jobs_of(engine, capped_alert) == []
    engine.dispose()


# ----- migrations -----


def test_migrations_down_to_0001_and_up(database_url):
    downgrade(database_url, "0001")
    engine = create_engine(database_url)
    try:
        tables = set(inspect(engine).get_table_names())
        assert {"silences", "notifications", "scheduled_runs", "scheduler_lease"}.isdisjoint(tables)
        assert "lease_owner" not in {column["name"] for column in inspect(engine).get_columns("jobs")}
        engine.dispose()
        upgrade(database_url, "head")
        tables = set(inspect(engine).get_table_names())
        assert {"silences", "notifications", "notification_attempts", "scheduled_runs", "scheduler_lease"} <= tables
        assert {"lease_owner", "parent_job_id", "attempts"} <= {column["name"] for column in inspect(engine).get_columns("jobs")}
        assert {"group_key", "acknowledged_by", "resolved_at"} <= {column["name"] for column in inspect(engine).get_columns("alerts")}
    finally:
        engine.dispose()


# ----- slots, runs and retention -----


@pytest.mark.parametrize(
    ("interval", "offset", "moment", "slot"),
    [
        (timedelta(seconds=1), timedelta(0), T0 + timedelta(seconds=3.7), T0 + timedelta(seconds=3)),
        (timedelta(seconds=60), timedelta(0), T0 + timedelta(seconds=59), T0),
        (timedelta(seconds=7), timedelta(0), datetime(2000, 1, 1, 0, 0, 20, tzinfo=timezone.utc), datetime(2000, 1, 1, 0, 0, 14, tzinfo=timezone.utc)),
        (timedelta(days=1), timedelta(hours=2), T0, datetime(2026, 12, 1, 2, 0, tzinfo=timezone.utc)),
        (timedelta(days=1), timedelta(hours=2), datetime(2026, 12, 1, 1, 0, tzinfo=timezone.utc), datetime(2026, 11, 30, 2, 0, tzinfo=timezone.utc)),
    ],
)
def test_slot_at(interval, offset, moment, slot):
    from controlplane.scheduler import PeriodicTask

    task = PeriodicTask("t", interval, lambda: None, offset=offset)
    assert task.slot_at(moment) == slot
    assert task.trigger().get_next_fire_time(None, slot) == slot


def test_slot_is_recorded_once_and_gaps_coalesce(database_url, reader):
    from controlplane.scheduler import PeriodicTask, record_misfire, start_run

    engine = make_engine(database_url)
    task = PeriodicTask("probe", timedelta(seconds=1), lambda: None)
    assert start_run(engine, task, T0, "scheduler-a") is True
    assert start_run(engine, task, T0, "scheduler-b") is False
    record_misfire(engine, "probe", T0 + timedelta(seconds=2), "scheduler-a")
    assert start_run(engine, task, T0 + timedelta(seconds=4), "scheduler-b") is True
    engine.dispose()
    with transaction(reader) as session:
        runs = session.scalars(select(ScheduledRun).where(ScheduledRun.name == "probe").order_by(ScheduledRun.scheduled_for)).all()
        assert [(as_utc(run.scheduled_for) - T0).seconds for run in runs] == [0, 1, 2, 3, 4]
        assert [run.status for run in runs] == ["running", "coalesced", "misfired", "coalesced", "running"]
        assert [run.owner for run in runs] == ["scheduler-a", "scheduler-b", "scheduler-a", "scheduler-b", "scheduler-b"]


def test_retention_keeps_referenced_jobs(database_url, reader):
    from controlplane.scheduler import apply_retention
    from controlplane.store.drift_models import WindowProfile
    from controlplane.store.models import DeadLetter, Silence

    engine = make_engine(database_url)
    old = utcnow() - timedelta(days=40)
    with transaction(engine) as session:
        alert_id = open_or_update_alert(session, add_finding(session), settings=Settings(database_url=database_url)).id

        def finished_job(kind: str, **fields) -> Job:
            job = Job(kind=kind, status="succeeded", params={}, result={}, created_at=old, finished_at=old, **fields)
            session.add(job)
            session.flush()
            return job

        finished_job("old_plain")
        parent = finished_job("old_parent")
        finished_job("old_child", parent_job_id=parent.id)
        noticed = finished_job("old_with_pending_notification")
        session.add(Notification(alert_id=alert_id, job_id=noticed.id, fingerprint="f", group_key="g", event="policy", status="pending", created_at=old))
        session.add(Notification(alert_id=alert_id, fingerprint="f", group_key="g", event="firing", status="sent", created_at=old))
        session.add(Job(kind="old_running", status="running", params={}, result={}, created_at=old))
        finished_job("recent").finished_at = utcnow()
        session.add(DeadLetter(topic="t", partition=0, offset=1, reason="bad", size_bytes=3, created_at=old))
        session.add(DeadLetter(topic="t", partition=0, offset=2, reason="bad", size_bytes=3, created_at=utcnow()))
        session.add(Silence(app="a", starts_at=old, ends_at=old + timedelta(hours=1), created_by="alice", comment=""))
        session.add(ScheduledRun(name="heartbeat", scheduled_for=old, status="succeeded", details={}))
        for start in (old, utcnow()):
            session.add(WindowProfile(app="a", model="m", window_start=start, event_count=1, profile={}))

    counts = apply_retention(engine, Settings(database_url=database_url, retention_days=30))
    engine.dispose()
    assert counts == {
        "dead_letters": 1, "notification_attempts": 0, "notifications": 1, "jobs": 2, "silences": 1, "window_profiles": 1,
        "scheduled_runs": 1,
    }
    with transaction(reader) as session:
        kinds = set(session.scalars(select(Job.kind)))
    assert kinds == {"old_parent", "old_with_pending_notification", "old_running", "recent"}
