"""Policy files: validation errors, durations, matching, reloads, and job rules evaluated on SQLite."""

from __future__ import annotations

import logging
import os
from datetime import datetime, timedelta, timezone

import pytest

from controlplane import jobs
from controlplane.alerting import create_silence, open_or_update_alert
from controlplane.errors import ConfigurationError
from controlplane.policies import (
    AlertRule,
    Matcher,
    Policy,
    current_policy,
    evaluate_job_rules,
    load_policy,
    parse_duration,
)
from controlplane.settings import Settings
from controlplane.store.engine import make_engine, transaction
from controlplane.store.migrate import upgrade
from controlplane.store.models import Finding, FlaggedInteraction, Job, utcnow

VALID = """
version: 1
alert_rules:
  - name: everything
job_rules:
  - name: curate
    match: {kind: safety}
    job: curation
"""


def write(tmp_path, text: str, name: str = "policy.yaml"):
    path = tmp_path / name
    path.write_text(text)
    return path


def test_packaged_policy_is_valid():
    policy = load_policy()
    assert [rule.name for rule in policy.alert_rules] == [
        "safety-rate", "drift", "cost-anomaly", "budget-burn", "unknown-cost", "other-findings"
    ]
    assert policy.job_kinds() == {"curation", "fine_tune"}
    curate = policy.job_rules[0]
    assert (curate.min_flagged_interactions, curate.cooldown, curate.then.job) == (50, timedelta(hours=6), "fine_tune")


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("90s", 90), ("30m", 1800), ("2h", 7200), ("1d", 86400), ("1w", 604800), ("1h30m", 5400), ("1.5h", 5400), (" 2 h ", 7200)],
)
def test_parse_duration(text, seconds):
    assert parse_duration(text) == timedelta(seconds=seconds)


@pytest.mark.parametrize("text", ["", "10", "2x", "h", "-1h", "2h junk", "PT2H"])
def test_parse_duration_rejects(text):
    with pytest.raises(ConfigurationError, match="invalid duration"):
        parse_duration(text)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("version: 2\nalert_rules: []\n", ["version", "2"]),
        ("version: 1\n", ["alert_rules: Field required"]),
        ("version: 1\nalert_rules:\n  - name: a\n    min_severity: severe\n", ["alert_rules[0].min_severity", "'severe'"]),
        ("version: 1\nalert_rules:\n  - name: bad name\n", ["alert_rules[0].name", "'bad name'"]),
        ("version: 1\nalert_rules:\n  - name: a\n    match: {team: x}\n", ["alert_rules[0].match.team", "Extra inputs"]),
        ("version: 1\nalert_rules:\n  - name: a\n    min_sample_size: -3\n", ["alert_rules[0].min_sample_size", "-3"]),
        (VALID + "    max_per_day: 0\n", ["job_rules[0].max_per_day", "greater than or equal to 1", "0"]),
        (VALID + "    min_flaged_interactions: 5\n", ["job_rules[0].min_flaged_interactions", "Extra inputs", "5"]),
        (VALID + "    cooldown: 6 hours\n", ["job_rules[0].cooldown", "invalid duration", "'6 hours'"]),
        (VALID + "    then: {job: fine_tune, approve: true}\n", ["job_rules[0].then.approve", "Extra inputs"]),
        (VALID + "  - name: curate\n    job: curation\n", ["repeated: curate"]),
    ],
)
def test_invalid_policy_names_file_field_and_value(tmp_path, text, expected):
    path = write(tmp_path, text)
    with pytest.raises(ConfigurationError) as error:
        load_policy(path)
    message = str(error.value)
    assert str(path) in message
    for part in expected:
        assert part in message


@pytest.mark.parametrize(
    ("text", "expected"),
    [("version: [1\n", "is not valid YAML"), ("- version: 1\n", "must contain a mapping"), ("", "must contain a mapping")],
)
def test_unreadable_policy_document(tmp_path, text, expected):
    path = write(tmp_path, text)
    with pytest.raises(ConfigurationError, match=expected):
        load_policy(path)


def test_missing_policy_file(tmp_path):
    with pytest.raises(ConfigurationError) as error:
        load_policy(tmp_path / "absent.yaml")
    assert "absent.yaml cannot be read" in str(error.value)
    assert "CONTROLPLANE_POLICY_FILE" in str(error.value)


@pytest.mark.parametrize(
    ("matcher", "labels", "expected"),
    [
        ({}, ("safety", "flagged_rate", "assistant", "m1"), True),
        ({"kind": "safety"}, ("safety", "flagged_rate", "assistant", "m1"), True),
        ({"kind": "drift"}, ("safety", "flagged_rate", "assistant", "m1"), False),
        ({"app": "chat-*", "model": "gpt-4o*"}, ("safety", "x", "chat-eu", "gpt-4o-mini"), True),
        ({"app": "chat-*", "model": "gpt-4o*"}, ("safety", "x", "search", "gpt-4o-mini"), False),
        ({"subject": "[fp]*"}, ("safety", "pii_rate", "a", "m"), True),
    ],
)
def test_matcher(matcher, labels, expected):
    assert Matcher(**matcher).matches(*labels) is expected


@pytest.mark.parametrize(
    ("rule", "severity", "sample_size", "expected"),
    [
        ({}, "info", 1, True),
        ({"min_severity": "warning"}, "info", 100, False),
        ({"min_severity": "warning"}, "critical", 100, True),
        ({"min_sample_size": 50}, "warning", 49, False),
        ({"min_sample_size": 50}, "warning", 50, True),
    ],
)
def test_alert_rule_applies_to(rule, severity, sample_size, expected):
    finding = Finding(kind="drift", subject="features", app="a", model="m", severity=severity, sample_size=sample_size)
    assert AlertRule(name="r", **rule).applies_to(finding) is expected


def test_policy_reloads_after_edit(tmp_path):
    path = write(tmp_path, VALID)
    settings = Settings(policy_file=path)
    assert [rule.name for rule in current_policy(settings).job_rules] == ["curate"]
    path.write_text(VALID.replace("name: curate", "name: curate-more"))
    os.utime(path, ns=(1, path.stat().st_mtime_ns + 1_000_000))
    assert [rule.name for rule in current_policy(settings).job_rules] == ["curate-more"]


def test_broken_edit_keeps_previous_policy(tmp_path, caplog):
    path = write(tmp_path, VALID)
    settings = Settings(policy_file=path)
    before = current_policy(settings)
    path.write_text(VALID + "    max_per_day: 0\n")
    os.utime(path, ns=(1, path.stat().st_mtime_ns + 1_000_000))
    with caplog.at_level(logging.ERROR, logger="controlplane.policies"):
        assert current_policy(settings) is before
    assert "previous policy stays in force" in caplog.text
    assert "max_per_day" in caplog.text


def test_broken_first_load_raises(tmp_path):
    path = write(tmp_path, "version: 1\n", name="broken.yaml")
    with pytest.raises(ConfigurationError, match="alert_rules"):
        current_policy(Settings(policy_file=path))


# ----- job rules against the store -----

ALERT_POLICY = Policy.model_validate({"version": 1, "alert_rules": [{"name": "all"}]})
T0 = datetime(2026, 12, 1, 10, 0, tzinfo=timezone.utc)


@pytest.fixture
def engine(tmp_path):
    url = f"sqlite:///{tmp_path / 'policies.db'}"
    upgrade(url)
    engine = make_engine(url)
    yield engine
    engine.dispose()


def open_alert(engine, app="assistant", model="m1", severity="warning", flagged=0, minute=0) -> int:
    """Store `flagged` flagged interactions and a safety finding, and open its alert."""
    settings = Settings(database_url=str(engine.url))
    now = utcnow()
    with transaction(engine) as session:
        for index in range(flagged):
            session.add(
                FlaggedInteraction(
                    event_id=f"{app}-{model}-{minute}-{index}", app=app, model=model, event_time=now,
                    detectors=[{"detector": "pii"}], prompt="mail alice@example.org", completion="ok", created_at=now,
                )
            )
        start = T0 + timedelta(minutes=minute)
        finding = Finding(
            kind="safety", subject="flagged_rate", app=app, model=model, window_start=start,
            window_end=start + timedelta(minutes=1), severity=severity, summary="flagged", sample_size=100,
            test=None, score=None, threshold=None, details={},
        )
        session.add(finding)
        session.flush()
        return open_or_update_alert(session, finding, policy=ALERT_POLICY, settings=settings).id


def rule_policy(**rule) -> Policy:
    base = {"name": "curate", "match": {"kind": "safety"}, "job": "curation", "max_concurrent": None}
    return Policy.model_validate({"version": 1, "alert_rules": [{"name": "all"}], "job_rules": [{**base, **rule}]})


def evaluate(engine, policy: Policy):
    return evaluate_job_rules(engine, Settings(database_url=str(engine.url)), policy=policy)


def test_enough_flagged_interactions_start_job(engine):
    alert_id = open_alert(engine, flagged=25)
    outcome = evaluate(engine, rule_policy(min_flagged_interactions=20, params={"format": "jsonl"}))
    assert len(outcome.created) == 1
    with transaction(engine) as session:
        job = session.get(Job, outcome.created[0])
        assert (job.kind, job.status, job.alert_id, job.policy) == ("curation", "pending", alert_id, "curate")
        assert job.created_by == "policy:curate"
        assert (job.params["app"], job.params["model"], job.params["format"]) == ("assistant", "m1", "jsonl")
        assert "since" in job.params


@pytest.mark.parametrize(
    ("rule", "alert", "reason"),
    [
        ({"min_flagged_interactions": 20}, {"flagged": 5}, "too_few_flagged_interactions"),
        ({"min_severity": "critical"}, {"severity": "warning"}, "below_min_severity"),
        ({"min_occurrences": 2}, {}, "too_few_occurrences"),
    ],
)
def test_rule_conditions_block_job(engine, rule, alert, reason):
    open_alert(engine, **alert)
    outcome = evaluate(engine, rule_policy(**rule))
    assert outcome.created == []
    assert dict(outcome.skipped) == {reason: 1}


def test_one_job_per_alert_and_rule(engine):
    open_alert(engine)
    policy = rule_policy()
    assert len(evaluate(engine, policy).created) == 1
    second = evaluate(engine, policy)
    assert second.created == []
    assert dict(second.skipped) == {"already_started": 1}


@pytest.mark.parametrize(
    ("rule", "reason"),
    [
        ({"cooldown": "1h"}, "cooldown"),
        ({"max_concurrent": 1}, "max_concurrent"),
        ({"max_per_day": 1}, "max_per_day"),
    ],
)
def test_limits_block_second_alert(engine, rule, reason):
    open_alert(engine)
    policy = rule_policy(**rule)
    assert len(evaluate(engine, policy).created) == 1
    _second_alert_same_app(engine)
    outcome = evaluate(engine, policy)
    assert outcome.created == []
    assert dict(outcome.skipped) == {"already_started": 1, reason: 1}


def _second_alert_same_app(engine) -> int:
    # Another subject on the same (app, model) gives a second alert that the cooldown applies to.
    settings = Settings(database_url=str(engine.url))
    with transaction(engine) as session:
        start = T0 + timedelta(minutes=30)
        finding = Finding(
            kind="safety", subject="pii_rate", app="assistant", model="m1", window_start=start,
            window_end=start + timedelta(minutes=1), severity="warning", summary="pii", sample_size=100,
            test=None, score=None, threshold=None, details={},
        )
        session.add(finding)
        session.flush()
        return open_or_update_alert(session, finding, policy=ALERT_POLICY, settings=settings).id


def test_silenced_alert_starts_no_job(engine):
    open_alert(engine, flagged=30)
    with transaction(engine) as session:
        create_silence(session, created_by="alice", duration=timedelta(hours=1), app="assistant", comment="maintenance")
    outcome = evaluate(engine, rule_policy(min_flagged_interactions=20))
    assert outcome.created == []
    assert dict(outcome.skipped) == {"silenced": 1}


def test_approval_rule_creates_waiting_job(engine):
    open_alert(engine)
    outcome = evaluate(engine, rule_policy(requires_approval=True))
    with transaction(engine) as session:
        assert session.get(Job, outcome.created[0]).status == jobs.AWAITING_APPROVAL


def test_unmatched_alert_is_not_counted(engine):
    open_alert(engine)
    outcome = evaluate(engine, rule_policy(match={"kind": "drift"}))
    assert outcome.created == []
    assert dict(outcome.skipped) == {}
    assert outcome.open_alerts == 1
