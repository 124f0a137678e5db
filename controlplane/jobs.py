"""Jobs: a state machine in SQL, claimed under a lease and run through a registry of job kinds.

    awaiting_approval --approve--> pending --claim--> running --> succeeded | failed
            |                         |                  |
            +---------cancel----------+------cancel------+--> cancelled
    failed --retry--> pending

A running job holds a lease (lease_owner, lease_expires_at) that a thread of its runner renews.
When the runner's process dies, the lease expires and the next claim takes the job again,
counting one more attempt, until `max_attempts` claims have been used up. A job function that
raises fails its job at once; `controlplane jobs retry ID` queues it again.

Other modules add job kinds with `register_job_kind("curation", function)`. The function gets a
JobContext and returns a JSON-ready dict, which is stored as the job's result.
"""

from __future__ import annotations

import importlib
import logging
import threading
import time
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any, Callable, Mapping

from sqlalchemy import Engine, and_, or_, select
from sqlalchemy.orm import Session

from controlplane.errors import ConfigurationError, ControlPlaneError
from controlplane.settings import Settings, get_settings
from controlplane.store.engine import transaction
from controlplane.store.models import Job, utcnow
from controlplane.windows import as_utc

log = logging.getLogger(__name__)

AWAITING_APPROVAL = "awaiting_approval"
PENDING = "pending"
RUNNING = "running"
SUCCEEDED = "succeeded"
FAILED = "failed"
CANCELLED = "cancelled"
JOB_STATUSES = (AWAITING_APPROVAL, PENDING, RUNNING, SUCCEEDED, FAILED, CANCELLED)
ACTIVE_STATUSES = (AWAITING_APPROVAL, PENDING, RUNNING)
FINISHED_STATUSES = (SUCCEEDED, FAILED, CANCELLED)
TRANSITIONS: dict[str, frozenset[str]] = {
    AWAITING_APPROVAL: frozenset({PENDING, CANCELLED}),
    PENDING: frozenset({RUNNING, CANCELLED}),
    RUNNING: frozenset({SUCCEEDED, FAILED, CANCELLED}),
    FAILED: frozenset({PENDING}),
    SUCCEEDED: frozenset(),
    CANCELLED: frozenset(),
}

JobFunction = Callable[["JobContext"], "Mapping[str, Any] | None"]
_registry: dict[str, JobFunction] = {}
_registry_lock = threading.Lock()
# Kinds this package implements itself. They are imported on first use because
# controlplane.alerting imports this module.
_BUILTIN_KINDS = {"notify": ("controlplane.alerting.outbox", "run_notify_job")}


# ----- registry -----


def register_job_kind(kind: str, function: JobFunction, *, replace: bool = False) -> None:
    """Register the function that runs jobs of `kind`. Registering the same function again changes nothing."""
    if not kind or not callable(function):
        raise ControlPlaneError(f"register_job_kind needs a non-empty kind and a callable, got {kind!r} and {function!r}")
    with _registry_lock:
        current = _registry.get(kind)
        if current is not None and current is not function and not replace:
            raise ControlPlaneError(
                f"job kind {kind!r} is already registered to {_name(current)}; pass replace=True to register {_name(function)}"
            )
        _registry[kind] = function


def registered_job_kinds() -> list[str]:
    """Return the job kinds that have a function in this process, built-in kinds included."""
    return sorted(set(_registry) | set(_BUILTIN_KINDS))


def job_function(kind: str) -> JobFunction:
    """Return the function registered for `kind`, or raise ControlPlaneError when there is none."""
    function = _registry.get(kind)
    if function is None and kind in _BUILTIN_KINDS:
        module_name, attribute = _BUILTIN_KINDS[kind]
        function = getattr(importlib.import_module(module_name), attribute)
    if function is None:
        raise ControlPlaneError(
            f"no function is registered for job kind {kind!r} (registered: {', '.join(registered_job_kinds())}); "
            "add the module that calls register_job_kind for it to CONTROLPLANE_JOB_PLUGINS"
        )
    return function


def load_job_plugins(modules: list[str]) -> None:
    """Import each plugin module so that it registers its job kinds. A module that fails raises ConfigurationError."""
    for module in modules:
        try:
            importlib.import_module(module)
        except ImportError as exc:
            raise ConfigurationError(
                f"job plugin module {module!r} from CONTROLPLANE_JOB_PLUGINS cannot be imported: {exc}; "
                "install it or remove it from the setting (a JSON list)"
            ) from exc
        log.info("job plugin %s loaded; job kinds now: %s", module, ", ".join(registered_job_kinds()))


def _name(function: Callable) -> str:
    return f"{getattr(function, '__module__', '?')}.{getattr(function, '__qualname__', repr(function))}"


# ----- state machine -----


def check_transition(job: Job, target: str) -> None:
    """Raise ControlPlaneError unless `job` may move from its status to `target`."""
    allowed = TRANSITIONS.get(job.status, frozenset())
    if target not in allowed:
        choices = ", ".join(sorted(allowed)) or f"none, {job.status} is final"
        raise ControlPlaneError(f"job {job.id} cannot go from {job.status} to {target} (allowed from {job.status}: {choices})")


def _move(job: Job, target: str) -> None:
    check_transition(job, target)
    job.status = target


def create_job(
    session: Session,
    kind: str,
    *,
    params: Mapping[str, Any] | None = None,
    alert_id: int | None = None,
    parent_job_id: int | None = None,
    policy: str | None = None,
    created_by: str | None = None,
    requires_approval: bool = False,
    max_attempts: int | None = None,
) -> Job:
    """Insert a job, pending or awaiting approval, in the caller's transaction and return it."""
    if not kind:
        raise ControlPlaneError("a job needs a kind, e.g. curation or fine_tune")
    job = Job(
        kind=kind, status=AWAITING_APPROVAL if requires_approval else PENDING, params=dict(params or {}),
        alert_id=alert_id, parent_job_id=parent_job_id, policy=policy, created_by=created_by, attempts=0,
        max_attempts=max_attempts or get_settings().job_max_attempts, created_at=utcnow(),
    )
    session.add(job)
    session.flush()
    log.info(
        "job %d created: kind=%s status=%s alert=%s parent=%s by %s",
        job.id, kind, job.status, alert_id, parent_job_id, created_by or "unknown",
    )
    return job


def get_job(session: Session, job_id: int, *, for_update: bool = False) -> Job:
    """Return job `job_id`, or raise ControlPlaneError when it does not exist."""
    job = session.get(Job, job_id, with_for_update=for_update)
    if job is None:
        raise ControlPlaneError(f"job {job_id} not found; 'controlplane jobs list' shows the existing ones")
    return job


def approve_job(session: Session, job_id: int, by: str, *, now: datetime | None = None) -> Job:
    """Move a job from awaiting_approval to pending and record who approved it."""
    job = get_job(session, job_id, for_update=True)
    _move(job, PENDING)
    job.approved_by, job.approved_at = by, now or utcnow()
    log.info("job %d approved by %s", job.id, by)
    return job


def cancel_job(session: Session, job_id: int, by: str) -> Job:
    """Cancel a job that has not finished. The function of a running job can check JobContext.should_stop."""
    job = get_job(session, job_id, for_update=True)
    was = job.status
    _move(job, CANCELLED)
    job.cancelled_by, job.finished_at = by, utcnow()
    job.lease_owner = job.lease_expires_at = None
    log.info("job %d cancelled by %s (was %s)", job.id, by, was)
    return job


def retry_job(session: Session, job_id: int, by: str) -> Job:
    """Queue a failed job again with a fresh count of attempts."""
    job = get_job(session, job_id, for_update=True)
    _move(job, PENDING)
    job.attempts, job.finished_at = 0, None
    log.info("job %d queued again by %s after: %s", job.id, by, job.error)
    return job


# ----- claiming and leases -----


def claim_job(engine: Engine, owner: str, *, lease_seconds: float, now: datetime | None = None) -> Job | None:
    """Claim the oldest pending job, or a running job whose lease expired, and commit the claim.

    A job whose lease expired after its last allowed attempt is marked failed instead.
    """
    now = now or utcnow()
    # A running job without a lease (from before leases existed) counts as expired.
    expired = or_(Job.lease_expires_at.is_(None), Job.lease_expires_at < now)
    claimable = or_(Job.status == PENDING, and_(Job.status == RUNNING, expired))
    with transaction(engine) as session:
        while True:
            # SKIP LOCKED lets concurrent runners on PostgreSQL pass over each other's claims.
            # SQLite has no row locks, so BEGIN IMMEDIATE serializes the claims instead.
            query = select(Job).where(claimable).order_by(Job.id).limit(1).with_for_update(skip_locked=True)
            job = session.scalar(query)
            if job is None:
                return None
            if job.status == RUNNING and job.attempts >= job.max_attempts:
                _fail_exhausted(job, now)
                continue
            _take(job, owner, lease_seconds, now)
            return job


def _take(job: Job, owner: str, lease_seconds: float, now: datetime) -> None:
    if job.status == RUNNING:
        log.warning(
            "job %d: lease of %s expired at %s; claimed again by %s (attempt %d of %d)",
            job.id, job.lease_owner, _when(job.lease_expires_at), owner, job.attempts + 1, job.max_attempts,
        )
    else:
        _move(job, RUNNING)
    job.attempts += 1
    job.lease_owner, job.heartbeat_at = owner, now
    job.lease_expires_at = now + timedelta(seconds=lease_seconds)
    job.started_at = job.started_at or now


def _fail_exhausted(job: Job, now: datetime) -> None:
    job.error = (
        f"lease of {job.lease_owner} expired at {_when(job.lease_expires_at)} after attempt "
        f"{job.attempts} of {job.max_attempts}; its process probably died"
    )
    _move(job, FAILED)
    job.finished_at, job.lease_owner, job.lease_expires_at = now, None, None
    log.error("job %d failed: %s", job.id, job.error)


def _when(moment: datetime | None) -> str:
    return as_utc(moment).isoformat() if moment is not None else "unknown"


def renew_job_lease(engine: Engine, job_id: int, owner: str, lease_seconds: float) -> bool:
    """Extend the lease of a running job. Return False once `owner` no longer holds it."""
    now = utcnow()
    with transaction(engine) as session:
        job = session.get(Job, job_id, with_for_update=True)
        if job is None or job.status != RUNNING or job.lease_owner != owner:
            return False
        job.heartbeat_at, job.lease_expires_at = now, now + timedelta(seconds=lease_seconds)
        return True


def finish_job(engine: Engine, job_id: int, owner: str, *, result: Mapping[str, Any] | None = None, error: str | None = None) -> Job:
    """Record the outcome of a run. A succeeded job with a follow-up (params["then"]) creates its child job."""
    now = utcnow()
    with transaction(engine) as session:
        job = get_job(session, job_id, for_update=True)
        if job.status == CANCELLED:
            job.result, job.error = dict(result or {}), error
            log.warning("job %d was cancelled while it ran; its result is stored and no follow-up job is created", job.id)
            return job
        if job.status != RUNNING or job.lease_owner != owner:
            log.warning(
                "job %d finished under %s, but it is now %s under %s; this outcome is dropped",
                job.id, owner, job.status, job.lease_owner,
            )
            return job
        _move(job, SUCCEEDED if error is None else FAILED)
        job.result, job.error, job.finished_at = dict(result or {}), error, now
        job.lease_owner = job.lease_expires_at = None
        if error is None and job.params.get("then"):
            _create_follow_up(session, job)
        return job


def _create_follow_up(session: Session, parent: Job) -> Job:
    follow = parent.params["then"]
    inherited = {key: parent.params[key] for key in ("app", "model", "alert_kind", "alert_subject", "since") if key in parent.params}
    return create_job(
        session, follow["job"], params={**inherited, **follow.get("params", {}), "parent_result": parent.result},
        alert_id=parent.alert_id, parent_job_id=parent.id, policy=parent.policy, created_by=f"job:{parent.id}",
        requires_approval=bool(follow.get("requires_approval")), max_attempts=parent.max_attempts,
    )


# ----- running -----


@dataclass
class JobContext:
    """Argument of a job function: the job's fields, the store, the settings and a cancellation flag."""

    job_id: int
    kind: str
    params: dict[str, Any]
    alert_id: int | None
    parent_job_id: int | None
    attempt: int
    owner: str
    engine: Engine
    settings: Settings
    stop_event: threading.Event = field(default_factory=threading.Event)

    def should_stop(self) -> bool:
        """Return True once the job was cancelled or its lease was lost. A long function should then return."""
        return self.stop_event.is_set()

    def create_child_job(self, kind: str, params: Mapping[str, Any] | None = None, *, requires_approval: bool = False) -> int:
        """Create a job linked to this one and to its alert, in its own transaction, and return its id."""
        with transaction(self.engine) as session:
            child = create_job(
                session, kind, params=params, alert_id=self.alert_id, parent_job_id=self.job_id,
                created_by=f"job:{self.job_id}", requires_approval=requires_approval,
                max_attempts=self.settings.job_max_attempts,
            )
            return child.id


class _LeaseKeeper:
    """Thread that renews a job's lease while its function runs."""

    def __init__(self, context: JobContext, lease_seconds: float) -> None:
        self.context = context
        self.lease_seconds = lease_seconds
        self.done = threading.Event()
        self.thread = threading.Thread(target=self._loop, name=f"job-{context.job_id}-lease", daemon=True)

    def __enter__(self) -> "_LeaseKeeper":
        self.thread.start()
        return self

    def __exit__(self, *_exc: object) -> None:
        self.done.set()
        self.thread.join()

    def _loop(self) -> None:
        context = self.context
        while not self.done.wait(self.lease_seconds / 3):
            try:
                renewed = renew_job_lease(context.engine, context.job_id, context.owner, self.lease_seconds)
            except Exception:  # noqa: BLE001 - a store error must not stop the renewals, the next one may succeed
                log.exception("job %d: renewing the lease failed; retrying in %.1fs", context.job_id, self.lease_seconds / 3)
                continue
            if not renewed:
                log.warning("job %d: %s no longer holds the lease (cancelled or claimed again)", context.job_id, context.owner)
                context.stop_event.set()
                return


def run_claimed_job(engine: Engine, settings: Settings, job: Job, owner: str) -> Job:
    """Run the function of a job this owner has claimed, keep its lease alive, and record the outcome."""
    context = JobContext(
        job_id=job.id, kind=job.kind, params=dict(job.params), alert_id=job.alert_id,
        parent_job_id=job.parent_job_id, attempt=job.attempts, owner=owner, engine=engine, settings=settings,
    )
    try:
        function = job_function(job.kind)
    except ControlPlaneError as exc:
        log.error("job %d failed: %s", job.id, exc)
        return finish_job(engine, job.id, owner, error=str(exc))
    started = time.perf_counter()
    try:
        with _LeaseKeeper(context, settings.job_lease_seconds):
            result = function(context)
    except Exception as exc:  # noqa: BLE001 - any failure of a job function fails the job, with the error kept
        log.exception("job %d (%s) raised on attempt %d", job.id, job.kind, context.attempt)
        finished = finish_job(engine, job.id, owner, error=f"{type(exc).__name__}: {exc}")
    else:
        finished = finish_job(engine, job.id, owner, result=dict(result or {}))
    log.info(
        "job %d (%s) %s on attempt %d in %.1fs", finished.id, finished.kind, finished.status,
        context.attempt, time.perf_counter() - started,
    )
    return finished


def run_pending_jobs(
    engine: Engine, settings: Settings, owner: str, *, max_jobs: int | None = None, keep_going: Callable[[], bool] | None = None
) -> list[Job]:
    """Claim and run jobs one after another until none is claimable, `max_jobs` ran, or `keep_going` returns False."""
    finished = []
    while len(finished) < (max_jobs or settings.job_runner_batch) and (keep_going is None or keep_going()):
        job = claim_job(engine, owner, lease_seconds=settings.job_lease_seconds)
        if job is None:
            break
        finished.append(run_claimed_job(engine, settings, job, owner))
    return finished
