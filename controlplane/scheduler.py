"""`controlplane scheduler`: the periodic tasks of the control plane, run by one active process.

Every scheduler process runs APScheduler (a BackgroundScheduler in UTC), but only the holder of
the lease row in scheduler_lease does any work. The holder renews the lease every
scheduler_renew_seconds. The others try to take it over just as often, and one succeeds once
the lease has not been renewed for scheduler_lease_seconds.

Each run of a periodic task is first inserted into scheduled_runs under (name, scheduled_for).
The unique key makes a second process that fires the same slot, for example during a takeover,
skip it. Slots are multiples of the task's interval counted from 2000-01-01 UTC, so every
process computes the same ones. A run also records the slots that passed without a run since
the previous one as "coalesced". APScheduler reports runs that start later than the grace
period as missed, and those are recorded as "misfired".
"""

from __future__ import annotations

import logging
import math
import os
import signal
import socket
import threading
import time
import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from typing import Any, Callable

from apscheduler.events import EVENT_JOB_MISSED, JobExecutionEvent
from apscheduler.schedulers.background import BackgroundScheduler
from apscheduler.triggers.interval import IntervalTrigger
from sqlalchemy import Engine, delete, exists, func, select, update
from sqlalchemy.exc import IntegrityError, SQLAlchemyError

from controlplane import jobs
from controlplane.alerting import send_due_notifications
from controlplane.errors import ConfigurationError
from controlplane.policies import current_policy, evaluate_job_rules
from controlplane.settings import Settings
from controlplane.store.drift_models import WindowProfile
from controlplane.store.engine import make_engine, transaction
from controlplane.store.models import (
    Base, DeadLetter, Job, Notification, NotificationAttempt, ScheduledRun, SchedulerLease, Silence, utcnow,
)
from controlplane.store.upsert import insert_ignore
from controlplane.windows import as_utc

log = logging.getLogger(__name__)

ANCHOR = datetime(2000, 1, 1, tzinfo=timezone.utc)
LEASE_NAME = "scheduler"
# Maximum coalesced rows one run inserts. A long outage would otherwise add one row per missed
# slot, so older slots stay unrecorded.
MAX_BACKFILL_RUNS = 100
TaskFunction = Callable[[], "dict[str, Any] | None"]


@dataclass(frozen=True)
class PeriodicTask:
    """A function run every `interval`, at slots `offset` after multiples of the interval since ANCHOR."""

    name: str
    interval: timedelta
    function: TaskFunction
    offset: timedelta = timedelta(0)

    def slot_at(self, moment: datetime) -> datetime:
        """Return the latest slot at or before `moment`."""
        base = ANCHOR + self.offset
        return base + ((moment - base) // self.interval) * self.interval

    def trigger(self) -> IntervalTrigger:
        """Return an APScheduler trigger that fires at this task's slots."""
        return IntervalTrigger(seconds=self.interval.total_seconds(), start_date=ANCHOR + self.offset, timezone=timezone.utc)


# ----- the lease -----


@dataclass(frozen=True)
class LeaseState:
    """Outcome of an attempt to take or renew the scheduler lease, and the holder after it."""

    held: bool
    owner: str
    expires_at: datetime | None
    previous_owner: str | None = None  # holder before this attempt, None when the row did not exist


def acquire_lease(engine: Engine, owner: str, lease_seconds: float, *, name: str = LEASE_NAME, now: datetime | None = None) -> LeaseState:
    """Take the lease when it is free or expired, or renew it when `owner` holds it."""
    now = now or utcnow()
    expires = now + timedelta(seconds=lease_seconds)
    try:
        with transaction(engine) as session:
            lease = session.get(SchedulerLease, name, with_for_update=True)
            if lease is None:
                session.add(SchedulerLease(name=name, owner=owner, acquired_at=now, renewed_at=now, expires_at=expires))
                session.flush()
                return LeaseState(True, owner, expires)
            previous = lease.owner
            if previous != owner and as_utc(lease.expires_at) > now:
                return LeaseState(False, previous, as_utc(lease.expires_at), previous)
            if previous != owner:
                lease.owner, lease.acquired_at = owner, now
            lease.renewed_at, lease.expires_at = now, expires
            return LeaseState(True, owner, expires, previous)
    except IntegrityError:
        # Two processes inserted the first lease row at once, and the other one's insert won.
        return LeaseState(False, "another scheduler", None)


def release_lease(engine: Engine, owner: str, *, name: str = LEASE_NAME) -> None:
    """Let the lease expire now, so that a standby takes over at its next attempt."""
    with transaction(engine) as session:
        session.execute(
            update(SchedulerLease).where(SchedulerLease.name == name, SchedulerLease.owner == owner).values(expires_at=utcnow())
        )


# ----- scheduled runs -----


def start_run(engine: Engine, task: PeriodicTask, scheduled_for: datetime, owner: str) -> bool:
    """Record the start of the run of `task` for a slot. Return False when the slot is already recorded."""
    try:
        with transaction(engine) as session:
            _record_gap(session, task, scheduled_for, owner)
            session.add(ScheduledRun(name=task.name, scheduled_for=scheduled_for, status="running", owner=owner, started_at=utcnow(), details={}))
            session.flush()
    except IntegrityError:
        log.info("task %s for %s is already recorded by another scheduler; skipped", task.name, scheduled_for.isoformat())
        return False
    return True


def _record_gap(session, task: PeriodicTask, scheduled_for: datetime, owner: str) -> None:
    # Counted from the last slot that had a run. Slots already recorded as misfired keep that status.
    previous = session.scalar(
        select(func.max(ScheduledRun.scheduled_for)).where(
            ScheduledRun.name == task.name,
            ScheduledRun.scheduled_for < scheduled_for,
            ScheduledRun.status.not_in(("coalesced", "misfired")),
        )
    )
    if previous is None:
        return
    missed = int((scheduled_for - as_utc(previous)) / task.interval) - 1
    if missed <= 0:
        return
    slots = [scheduled_for - task.interval * back for back in range(min(missed, MAX_BACKFILL_RUNS), 0, -1)]
    rows = [
        {"name": task.name, "scheduled_for": slot, "status": "coalesced", "owner": owner,
         "details": {"coalesced_into": scheduled_for.isoformat()}}
        for slot in slots
    ]
    insert_ignore(session, ScheduledRun, rows, ["name", "scheduled_for"])
    log.warning(
        "task %s: %d slots after %s passed without a run (no active scheduler, or a stalled one); "
        "the %d latest are recorded as coalesced into the run of %s unless already recorded as misfired",
        task.name, missed, as_utc(previous).isoformat(), len(rows), scheduled_for.isoformat(),
    )


def finish_run(engine: Engine, name: str, scheduled_for: datetime, status: str, *, error: str | None = None, details: dict | None = None) -> None:
    """Record the outcome of a run."""
    with transaction(engine) as session:
        session.execute(
            update(ScheduledRun)
            .where(ScheduledRun.name == name, ScheduledRun.scheduled_for == scheduled_for)
            .values(status=status, finished_at=utcnow(), error=error, details=details or {})
        )


def record_misfire(engine: Engine, name: str, scheduled_for: datetime, owner: str) -> None:
    """Record a slot that APScheduler skipped because it came later than the grace period."""
    with transaction(engine) as session:
        row = {"name": name, "scheduled_for": scheduled_for, "status": "misfired", "owner": owner, "details": {}}
        insert_ignore(session, ScheduledRun, [row], ["name", "scheduled_for"])


def mark_interrupted(engine: Engine, owner: str) -> int:
    """Mark the runs other schedulers left running as interrupted, and return how many."""
    with transaction(engine) as session:
        result = session.execute(
            update(ScheduledRun)
            .where(ScheduledRun.status == "running", ScheduledRun.owner != owner)
            .values(status="interrupted", finished_at=utcnow(), error=f"its scheduler lost the lease; {owner} took over")
        )
        return result.rowcount or 0


# ----- the tasks -----


def build_tasks(engine: Engine, settings: Settings, owner: str, is_active: Callable[[], bool]) -> list[PeriodicTask]:
    """Return the periodic tasks with the intervals of `settings`.

    The job runner stops claiming jobs once `is_active` returns False.
    """
    def every(seconds: float) -> timedelta:
        return timedelta(seconds=seconds)

    tasks = [
        PeriodicTask("heartbeat", every(settings.heartbeat_interval_seconds), lambda: {"owner": owner, "idle": True}),
        PeriodicTask("policy_evaluation", every(settings.policy_interval_seconds), lambda: _evaluate(engine, settings)),
        PeriodicTask("job_runner", every(settings.job_runner_interval_seconds), lambda: _run_jobs(engine, settings, owner, is_active)),
        PeriodicTask("notification_sender", every(settings.notify_interval_seconds), lambda: _send(engine, settings)),
        PeriodicTask(
            "reference_refresh", every(settings.reference_refresh_interval_seconds),
            lambda: queue_periodic_job(engine, settings, "reference_refresh", "reference_refresh", {}),
        ),
        PeriodicTask("retention", every(settings.retention_interval_seconds), lambda: _retain(engine, settings)),
    ]
    if settings.nightly_curation:
        tasks.append(
            PeriodicTask(
                "nightly_curation", timedelta(days=1), lambda: _nightly_curation(engine, settings),
                offset=timedelta(hours=settings.nightly_curation_hour),
            )
        )
    return tasks


# A task's details carry "idle": True when the run found nothing to do; such runs log at DEBUG.


def _evaluate(engine: Engine, settings: Settings) -> dict[str, Any]:
    outcome = evaluate_job_rules(engine, settings)
    return {**outcome.to_json(), "idle": not outcome.created}


def _run_jobs(engine: Engine, settings: Settings, owner: str, is_active: Callable[[], bool]) -> dict[str, Any]:
    finished = jobs.run_pending_jobs(engine, settings, owner, keep_going=is_active)
    return {"jobs": {str(job.id): job.status for job in finished}, "idle": not finished}


def _send(engine: Engine, settings: Settings) -> dict[str, Any]:
    summary = send_due_notifications(engine, settings)
    return {**summary.to_json(), "idle": summary.requests == 0 and summary.suppressed == 0}


def _retain(engine: Engine, settings: Settings) -> dict[str, Any]:
    counts = apply_retention(engine, settings)
    return {**counts, "idle": not any(counts.values())}


def _nightly_curation(engine: Engine, settings: Settings) -> dict[str, Any]:
    since = (utcnow() - timedelta(days=1)).isoformat()
    return queue_periodic_job(engine, settings, "curation", "nightly_curation", {"trigger": "nightly", "since": since})


def queue_periodic_job(engine: Engine, settings: Settings, kind: str, task_name: str, params: dict[str, Any]) -> dict[str, Any]:
    """Create a job for a periodic task unless no function runs its kind or the previous one is not finished."""
    if kind not in jobs.registered_job_kinds():
        return {"skipped": f"no function is registered for job kind {kind}"}
    created_by = f"scheduler:{task_name}"
    with transaction(engine) as session:
        previous = session.scalar(
            select(Job).where(Job.kind == kind, Job.created_by == created_by, Job.status.in_(jobs.ACTIVE_STATUSES)).limit(1)
        )
        if previous is not None:
            return {"skipped": f"job {previous.id} of the previous run is still {previous.status}"}
        job = jobs.create_job(session, kind, params=params, created_by=created_by, max_attempts=settings.job_max_attempts)
        return {"job_id": job.id}


def apply_retention(engine: Engine, settings: Settings, *, now: datetime | None = None) -> dict[str, int]:
    """Delete rows older than retention_days: dead letters, finished notifications and jobs, ended silences, runs,
    window profiles.

    A finished job that another row still points at (a child job, a notification, a dataset
    version, a model version) is kept, so the trail from alert to promotion stays whole.
    """
    cutoff = (now or utcnow()) - timedelta(days=settings.retention_days)
    old_notifications = select(Notification.id).where(Notification.status != "pending", Notification.created_at < cutoff)
    statements = {
        "dead_letters": delete(DeadLetter).where(DeadLetter.created_at < cutoff),
        "notification_attempts": delete(NotificationAttempt).where(NotificationAttempt.notification_id.in_(old_notifications)),
        "notifications": delete(Notification).where(Notification.id.in_(old_notifications)),
        "jobs": delete(Job).where(
            Job.status.in_(jobs.FINISHED_STATUSES), func.coalesce(Job.finished_at, Job.created_at) < cutoff, *_unreferenced_jobs()
        ),
        "silences": delete(Silence).where(Silence.ends_at < cutoff),
        # A window's profile matters only while someone may promote it; the reference keeps its own copy.
        "window_profiles": delete(WindowProfile).where(WindowProfile.window_start < cutoff),
        "scheduled_runs": delete(ScheduledRun).where(ScheduledRun.scheduled_for < cutoff, ScheduledRun.status != "running"),
    }
    with transaction(engine) as session:
        counts = {
            name: session.execute(statement.execution_options(synchronize_session=False)).rowcount or 0
            for name, statement in statements.items()
        }
    log.log(logging.INFO if any(counts.values()) else logging.DEBUG, "retention older than %s deleted %s", cutoff.isoformat(), counts)
    return counts


def _unreferenced_jobs() -> list:
    # Every foreign key to jobs.id in the metadata, including the other modules' tables.
    jobs_table = Job.__table__
    conditions = []
    for table in Base.metadata.tables.values():
        for key in table.foreign_keys:
            if key.column is not jobs_table.c.id:
                continue
            referrer = jobs_table.alias("child_jobs") if table is jobs_table else table
            conditions.append(~exists().where(referrer.c[key.parent.name] == jobs_table.c.id))
    return conditions


# ----- the service -----


def default_owner() -> str:
    """Return an owner id unique to this process: host, pid and a random suffix."""
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"


class SchedulerService:
    """APScheduler with the periodic tasks, gated by the scheduler lease."""

    def __init__(self, engine: Engine, settings: Settings, *, owner: str | None = None) -> None:
        if settings.scheduler_renew_seconds >= settings.scheduler_lease_seconds:
            raise ConfigurationError(
                f"scheduler_renew_seconds ({settings.scheduler_renew_seconds}) must be shorter than "
                f"scheduler_lease_seconds ({settings.scheduler_lease_seconds}), or the lease lapses between renewals"
            )
        self.engine, self.settings = engine, settings
        self.owner = owner or default_owner()
        self.tasks = {task.name: task for task in build_tasks(engine, settings, self.owner, lambda: self.is_active)}
        self._active_until = 0.0
        self._holder: str | None = None
        self.grace_seconds = max(1, math.ceil(settings.scheduler_misfire_grace_seconds))
        self.scheduler = BackgroundScheduler(timezone=timezone.utc)

    @property
    def is_active(self) -> bool:
        """Return whether this process holds the lease, by its own clock."""
        return time.monotonic() < self._active_until

    def start(self) -> None:
        """Take or wait for the lease and start firing the tasks."""
        self.renew_lease()
        # misfire_grace_time=None: a late renewal still runs, since skipping it could let the lease lapse.
        self.scheduler.add_job(
            self.renew_lease, IntervalTrigger(seconds=self.settings.scheduler_renew_seconds), id="lease",
            coalesce=True, max_instances=1, misfire_grace_time=None,
        )
        for task in self.tasks.values():
            self.scheduler.add_job(
                self._run_task, task.trigger(), args=[task], id=task.name, name=task.name,
                coalesce=True, max_instances=1, misfire_grace_time=self.grace_seconds,
            )
        self.scheduler.add_listener(self._on_missed, EVENT_JOB_MISSED)
        self.scheduler.start()
        log.info("scheduler %s started: %s", self.owner, ", ".join(f"{t.name} every {t.interval}" for t in self.tasks.values()))

    def stop(self) -> None:
        """Stop firing tasks and release the lease.

        A task still running is not interrupted. The interpreter waits for APScheduler's worker
        threads at exit, so a running job finishes first unless the process is killed.
        """
        self.scheduler.shutdown(wait=False)
        if self.is_active:
            release_lease(self.engine, self.owner)
        self._active_until = 0.0
        log.info("scheduler %s stopped", self.owner)

    def renew_lease(self) -> None:
        """Renew or take over the lease, and log when this process becomes active or standby."""
        attempt_started = time.monotonic()
        try:
            state = acquire_lease(self.engine, self.owner, self.settings.scheduler_lease_seconds)
        except SQLAlchemyError as exc:
            log.warning("scheduler %s: renewing the lease failed, retrying in %.0fs: %s", self.owner, self.settings.scheduler_renew_seconds, exc)
            return
        was_active = self.is_active
        if state.held:
            # Measured from before the attempt, so this process stops before the row expires.
            self._active_until = attempt_started + self.settings.scheduler_lease_seconds
            if not was_active:
                interrupted = mark_interrupted(self.engine, self.owner)
                log.info(
                    "scheduler %s is active; previous lease holder: %s; runs left running and now marked interrupted: %d",
                    self.owner, state.previous_owner or "none", interrupted,
                )
        else:
            self._active_until = 0.0
            if was_active or state.owner != self._holder:
                until = state.expires_at.isoformat() if state.expires_at else "unknown (it took the lease at the same moment)"
                log.info("scheduler %s is on standby: %s holds the lease until %s", self.owner, state.owner, until)
        self._holder = state.owner

    def _run_task(self, task: PeriodicTask) -> None:
        if not self.is_active:
            return
        scheduled_for = task.slot_at(utcnow())
        if not start_run(self.engine, task, scheduled_for, self.owner):
            return
        started = time.perf_counter()
        try:
            details = task.function() or {}
        except Exception as exc:  # noqa: BLE001 - a failed run is recorded and the next slot runs as usual
            log.exception("task %s for %s failed", task.name, scheduled_for.isoformat())
            finish_run(self.engine, task.name, scheduled_for, "failed", error=f"{type(exc).__name__}: {exc}")
            return
        idle = details.pop("idle", False)
        status = "skipped" if "skipped" in details else "succeeded"
        finish_run(self.engine, task.name, scheduled_for, status, details=details)
        level = logging.DEBUG if idle else logging.INFO
        log.log(level, "task %s for %s %s in %.2fs: %s", task.name, scheduled_for.isoformat(), status, time.perf_counter() - started, details)

    def _on_missed(self, event: JobExecutionEvent) -> None:
        if event.job_id not in self.tasks or not self.is_active:
            return
        scheduled_for = as_utc(event.scheduled_run_time)
        log.warning("task %s for %s started later than the %ds grace period; recorded as misfired", event.job_id, scheduled_for.isoformat(), self.grace_seconds)
        record_misfire(self.engine, event.job_id, scheduled_for, self.owner)


def check_policy_kinds(settings: Settings) -> None:
    """Raise ConfigurationError when a job rule of the policy names a kind no function is registered for."""
    policy = current_policy(settings)
    missing = sorted(policy.job_kinds() - set(jobs.registered_job_kinds()))
    if missing:
        raise ConfigurationError(
            f"the policy ({settings.policy_file or 'packaged policies.yaml'}) starts jobs of kinds no function is "
            f"registered for: {', '.join(missing)}; add the modules that register them to CONTROLPLANE_JOB_PLUGINS "
            "or remove those job rules"
        )


def run_scheduler(settings: Settings) -> None:
    """Run the scheduler in the foreground until SIGTERM or SIGINT."""
    from controlplane.store.migrate import check_current

    check_current(settings.database_url)
    jobs.load_job_plugins(settings.job_plugins)
    check_policy_kinds(settings)
    engine = make_engine(settings.database_url)
    service = SchedulerService(engine, settings)
    stop = threading.Event()
    for number in (signal.SIGTERM, signal.SIGINT):
        signal.signal(number, lambda *_: stop.set())
    service.start()
    try:
        while not stop.wait(1.0):
            pass
    finally:
        service.stop()
        engine.dispose()
