"""Policies: which findings open alerts (alert rules) and which alerts start jobs (job rules).

Users edit a YAML file (the packaged `controlplane/data/policies.yaml` is the starting point)
and point `CONTROLPLANE_POLICY_FILE` at it. The file is validated with pydantic, and any error
raises ConfigurationError naming the file, the field and the value.
"""

from __future__ import annotations

import fnmatch
import logging
import re
import threading
from collections import Counter
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from importlib import resources
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, ValidationError, model_validator
from sqlalchemy import Engine, func, select
from sqlalchemy.orm import Session

from controlplane import jobs
from controlplane.errors import ConfigurationError
from controlplane.settings import Settings
from controlplane.store.engine import transaction
from controlplane.store.models import Alert, Finding, FlaggedInteraction, Job, utcnow

log = logging.getLogger(__name__)

SEVERITIES = ("info", "warning", "critical")
Severity = Literal["info", "warning", "critical"]
_DURATION_PART = re.compile(r"(\d+(?:\.\d+)?)([smhdw])")
_UNIT_SECONDS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}
_NAME = r"^[A-Za-z0-9_.-]+$"


def parse_duration(text: str) -> timedelta:
    """Parse a duration such as "90s", "30m", "2h", "1d" or "1h30m", or raise ConfigurationError."""
    cleaned = text.strip().replace(" ", "")
    parts = _DURATION_PART.findall(cleaned)
    if not cleaned or "".join(number + unit for number, unit in parts) != cleaned:
        raise ConfigurationError(
            f"invalid duration {text!r}: use a number and a unit s, m, h, d or w, e.g. 90s, 30m, 2h, 1d or 1h30m"
        )
    return timedelta(seconds=sum(float(number) * _UNIT_SECONDS[unit] for number, unit in parts))


def severity_rank(severity: str) -> int:
    """Return the position of `severity` in info < warning < critical."""
    try:
        return SEVERITIES.index(severity)
    except ValueError:
        raise ConfigurationError(f"unknown severity {severity!r}: expected one of {', '.join(SEVERITIES)}") from None


def _duration_value(value: Any) -> Any:
    return parse_duration(value) if isinstance(value, str) else value


Duration = Annotated[timedelta, BeforeValidator(_duration_value)]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Matcher(_Strict):
    """Shell-style patterns (fnmatch, case-sensitive) on an alert's labels. An absent field matches anything."""

    kind: str | None = None
    subject: str | None = None
    app: str | None = None
    model: str | None = None

    def matches(self, kind: str, subject: str, app: str, model: str) -> bool:
        """Return whether every given pattern matches its label."""
        labels = {"kind": kind, "subject": subject, "app": app, "model": model}
        return all(
            fnmatch.fnmatchcase(labels[name], pattern)
            for name, pattern in self.model_dump().items()
            if pattern is not None
        )


class AlertRule(_Strict):
    """Rule that lets matching findings open an alert. The first rule that matches a finding applies."""

    name: str = Field(pattern=_NAME)
    match: Matcher = Matcher()
    min_severity: Severity = "info"
    min_sample_size: int = Field(1, ge=0, description="Rows the finding's window must have.")
    severity: Severity | None = Field(None, description="Severity of the alert, the finding's when empty.")
    notify: bool = Field(True, description="Queue webhook notifications for alerts of this rule.")

    def applies_to(self, finding: Finding) -> bool:
        """Return whether `finding` matches this rule's labels, severity and sample size."""
        return (
            self.match.matches(finding.kind, finding.subject, finding.app, finding.model)
            and severity_rank(finding.severity) >= severity_rank(self.min_severity)
            and finding.sample_size >= self.min_sample_size
        )


class FollowUp(_Strict):
    """A job created when the job of a rule succeeds, e.g. fine-tuning after curation."""

    job: str = Field(pattern=_NAME)
    requires_approval: bool = False
    params: dict[str, Any] = {}


class JobRule(_Strict):
    """Rule that starts a job of one kind for matching open alerts, with limits on how often."""

    name: str = Field(pattern=_NAME)
    match: Matcher = Matcher()
    job: str = Field(pattern=_NAME, description="Job kind, e.g. curation, fine_tune or notify.")
    min_severity: Severity = "info"
    min_occurrences: int = Field(1, ge=1, description="Findings the alert must have counted.")
    min_flagged_interactions: int = Field(
        0, ge=0, description="Flagged interactions of the alert's (app, model) stored within flagged_lookback."
    )
    flagged_lookback: Duration = timedelta(hours=24)
    cooldown: Duration = Field(timedelta(0), description="Minimum time between two jobs of this rule for one (app, model).")
    max_concurrent: int | None = Field(1, ge=1, description="Jobs of this rule awaiting approval, pending or running.")
    max_per_day: int | None = Field(None, ge=1, description="Jobs of this rule created in the last 24 hours.")
    requires_approval: bool = Field(False, description="Create the job awaiting approval (controlplane jobs approve ID).")
    params: dict[str, Any] = {}
    then: FollowUp | None = None


class Policy(_Strict):
    """The whole policy file."""

    version: Literal[1]
    alert_rules: list[AlertRule]
    job_rules: list[JobRule] = []

    @model_validator(mode="after")
    def _unique_names(self) -> "Policy":
        names = [rule.name for rule in self.alert_rules] + [rule.name for rule in self.job_rules]
        duplicates = sorted(name for name, count in Counter(names).items() if count > 1)
        if duplicates:
            raise ValueError(f"rule names must be unique, repeated: {', '.join(duplicates)}")
        return self

    def alert_rule_for(self, finding: Finding) -> AlertRule | None:
        """Return the first alert rule that applies to `finding`, or None."""
        return next((rule for rule in self.alert_rules if rule.applies_to(finding)), None)

    def job_kinds(self) -> set[str]:
        """Return every job kind the job rules and their follow-ups create."""
        kinds = {rule.job for rule in self.job_rules}
        return kinds | {rule.then.job for rule in self.job_rules if rule.then}


def packaged_policy_path() -> Path:
    """Return the path of the default policy file shipped with the package."""
    return Path(str(resources.files("controlplane") / "data" / "policies.yaml"))


def load_policy(path: Path | None = None) -> Policy:
    """Read and validate a policy file (the packaged one when `path` is None)."""
    path = Path(path) if path is not None else packaged_policy_path()
    try:
        document = yaml.safe_load(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise ConfigurationError(
            f"policy file {path} cannot be read ({exc.strerror}); set CONTROLPLANE_POLICY_FILE to a readable file"
        ) from exc
    except yaml.YAMLError as exc:
        raise ConfigurationError(f"policy file {path} is not valid YAML: {exc}") from exc
    if not isinstance(document, dict):
        raise ConfigurationError(f"policy file {path} must contain a mapping with version and alert_rules, got {type(document).__name__}")
    try:
        return Policy.model_validate(document)
    except ValidationError as exc:
        raise ConfigurationError(f"policy file {path} is invalid: {_describe(exc)}") from exc


def _describe(error: ValidationError) -> str:
    problems = []
    for item in error.errors():
        location = "".join(f"[{part}]" if isinstance(part, int) else f".{part}" for part in item["loc"]).lstrip(".")
        value = item.get("input")
        value_text = "" if isinstance(value, dict) else f" (value: {value!r})"
        problems.append(f"{location or 'document'}: {item['msg']}{value_text}")
    return "; ".join(problems)


_cache_lock = threading.Lock()
_cache: dict[Path, tuple[int, Policy]] = {}


def current_policy(settings: Settings) -> Policy:
    """Return the policy of `settings.policy_file`, reloaded when the file changes.

    The first load raises ConfigurationError on an invalid file. A later edit that breaks the
    file is logged as an error and the last valid policy stays in force, so that a typo does not
    stop a running worker.
    """
    path = Path(settings.policy_file) if settings.policy_file else packaged_policy_path()
    try:
        mtime = path.stat().st_mtime_ns
    except OSError:
        mtime = -1
    with _cache_lock:
        cached = _cache.get(path)
        if cached is not None and cached[0] == mtime:
            return cached[1]
        try:
            policy = load_policy(path)
        except ConfigurationError as exc:
            if cached is None:
                raise
            log.error("policy reload failed, the previous policy stays in force: %s", exc)
            return cached[1]
        _cache[path] = (mtime, policy)
    log.info("policy loaded from %s: %d alert rules, %d job rules", path, len(policy.alert_rules), len(policy.job_rules))
    return policy


@dataclass
class Evaluation:
    """Outcome of one evaluation of the job rules."""

    open_alerts: int = 0
    created: list[int] = field(default_factory=list)
    skipped: Counter = field(default_factory=Counter)

    def to_json(self) -> dict[str, Any]:
        """Return the outcome as a JSON-ready dict (scheduled_runs.details)."""
        return {"open_alerts": self.open_alerts, "created_jobs": self.created, "skipped": dict(self.skipped)}


def evaluate_job_rules(engine: Engine, settings: Settings, *, policy: Policy | None = None, now: datetime | None = None) -> Evaluation:
    """Create the jobs that the job rules ask for, for every open alert, in one transaction."""
    # The alerting package imports this module at load time, so its import waits until here.
    from controlplane.alerting.lifecycle import OPEN_STATUSES
    from controlplane.alerting.silences import matching_silence

    policy = policy or current_policy(settings)
    now = now or utcnow()
    outcome = Evaluation()
    with transaction(engine) as session:
        alerts = session.scalars(select(Alert).where(Alert.status.in_(OPEN_STATUSES)).order_by(Alert.id)).all()
        outcome.open_alerts = len(alerts)
        for alert in alerts:
            rules = [rule for rule in policy.job_rules if rule.match.matches(alert.kind, alert.subject, alert.app, alert.model)]
            if rules and matching_silence(session, alert, now) is not None:
                outcome.skipped["silenced"] += len(rules)
                continue
            for rule in rules:
                reason = blocked_reason(session, rule, alert, now)
                if reason is not None:
                    outcome.skipped[reason] += 1
                    continue
                outcome.created.append(_start_job(session, rule, alert, now, settings.job_max_attempts).id)
    # Evaluations that create nothing repeat every interval, so they log at DEBUG.
    log.log(
        logging.INFO if outcome.created else logging.DEBUG,
        "job rules evaluated: %d open alerts, %d jobs created %s, skipped %s",
        outcome.open_alerts, len(outcome.created), outcome.created, dict(outcome.skipped),
    )
    return outcome


def blocked_reason(session: Session, rule: JobRule, alert: Alert, now: datetime) -> str | None:
    """Return why `rule` must not start a job for `alert` now, or None when it may."""
    if _count(session, select(func.count(Job.id)).where(Job.alert_id == alert.id, Job.policy == rule.name)):
        return "already_started"
    if severity_rank(alert.severity) < severity_rank(rule.min_severity):
        return "below_min_severity"
    if alert.occurrences < rule.min_occurrences:
        return "too_few_occurrences"
    if rule.min_flagged_interactions and flagged_count(session, alert.app, alert.model, now - rule.flagged_lookback) < rule.min_flagged_interactions:
        return "too_few_flagged_interactions"
    if rule.cooldown and _in_cooldown(session, rule, alert, now):
        return "cooldown"
    active = select(func.count(Job.id)).where(Job.policy == rule.name, Job.status.in_(jobs.ACTIVE_STATUSES))
    if rule.max_concurrent is not None and _count(session, active) >= rule.max_concurrent:
        return "max_concurrent"
    today = select(func.count(Job.id)).where(Job.policy == rule.name, Job.created_at > now - timedelta(days=1))
    if rule.max_per_day is not None and _count(session, today) >= rule.max_per_day:
        return "max_per_day"
    return None


def flagged_count(session: Session, app: str, model: str, since: datetime) -> int:
    """Count flagged interactions of (app, model) stored since `since`."""
    query = select(func.count(FlaggedInteraction.id)).where(
        FlaggedInteraction.app == app, FlaggedInteraction.model == model, FlaggedInteraction.created_at >= since
    )
    return _count(session, query)


def _in_cooldown(session: Session, rule: JobRule, alert: Alert, now: datetime) -> bool:
    query = (
        select(func.count(Job.id))
        .join(Alert, Job.alert_id == Alert.id)
        .where(Job.policy == rule.name, Alert.app == alert.app, Alert.model == alert.model, Job.created_at > now - rule.cooldown)
    )
    return _count(session, query) > 0


def _count(session: Session, query) -> int:
    return int(session.scalar(query) or 0)


def _start_job(session: Session, rule: JobRule, alert: Alert, now: datetime, max_attempts: int) -> Job:
    params = {
        **rule.params,
        "app": alert.app,
        "model": alert.model,
        "alert_kind": alert.kind,
        "alert_subject": alert.subject,
        "since": (now - rule.flagged_lookback).isoformat(),
    }
    if rule.then is not None:
        params["then"] = rule.then.model_dump()
    return jobs.create_job(
        session, rule.job, params=params, alert_id=alert.id, policy=rule.name,
        created_by=f"policy:{rule.name}", requires_approval=rule.requires_approval, max_attempts=max_attempts,
    )
