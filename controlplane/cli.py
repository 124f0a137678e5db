"""The `controlplane` command line."""

from __future__ import annotations

import asyncio
import logging
import sys
from datetime import datetime, timezone
from pathlib import Path
from typing import Optional

import typer

from controlplane.errors import ControlPlaneError
from controlplane.settings import get_settings

app = typer.Typer(help="Control plane for LLM applications in production.", no_args_is_help=True)
db_app = typer.Typer(help="Create and migrate the SQL store.", no_args_is_help=True)
alerts_app = typer.Typer(help="List, acknowledge, resolve and silence alerts.", no_args_is_help=True)
jobs_app = typer.Typer(help="List, show, approve, cancel and retry curation, fine-tuning and notify jobs.", no_args_is_help=True)
app.add_typer(db_app, name="db")
app.add_typer(alerts_app, name="alerts")
app.add_typer(jobs_app, name="jobs")


def _fail(message: str) -> None:
    typer.secho(f"error: {message}", fg=typer.colors.RED, err=True)
    raise typer.Exit(code=1)


@db_app.command("upgrade")
def db_upgrade(
    revision: str = typer.Argument("head", help="Target revision."),
    url: Optional[str] = typer.Option(None, help="Database URL; CONTROLPLANE_DATABASE_URL when omitted."),
) -> None:
    """Create or upgrade the tables to the latest revision."""
    from controlplane.store.migrate import upgrade

    target = url or get_settings().database_url
    upgrade(target, revision)
    typer.echo(f"database upgraded to {revision}")


@db_app.command("downgrade")
def db_downgrade(
    revision: str = typer.Argument(..., help="Target revision; 'base' drops every table."),
    url: Optional[str] = typer.Option(None, help="Database URL; CONTROLPLANE_DATABASE_URL when omitted."),
) -> None:
    """Downgrade the tables to an earlier revision."""
    from controlplane.store.migrate import downgrade

    downgrade(url or get_settings().database_url, revision)
    typer.echo(f"database downgraded to {revision}")


@app.command()
def worker(loglevel: str = typer.Option("info", help="Log level: debug, info, warning, error.")) -> None:
    """Consume inference events, score them and close windows (one process of the consumer group)."""
    from faust.worker import Worker

    from controlplane.memory import set_mmap_threshold
    from controlplane.replay import ensure_topics
    from controlplane.store.migrate import check_current
    from streams.app import create_app

    settings = get_settings()
    set_mmap_threshold(settings.malloc_mmap_threshold_bytes)
    check_current(settings.database_url)
    asyncio.run(
        ensure_topics(
            settings.kafka_bootstrap,
            {settings.topic_events: settings.topic_partitions, settings.topic_dlq: settings.topic_partitions,
             settings.topic_findings: 1, settings.topic_alerts: 1},
        )
    )
    Worker(create_app(settings), loglevel=loglevel).execute_from_commandline()


@app.command()
def replay(
    files: list[Path] = typer.Argument(..., exists=True, dir_okay=False, help="JSONL or CSV files, played one after another."),
    mapping: str = typer.Option(
        "prompt=instruction+input,completion=output,app=replay,model=demo-code-model",
        "--map", help="Field mapping: prompt=FIELD[+FIELD],completion=FIELD,app=NAME,model=NAME[,route=...].",
    ),
    rows: Optional[int] = typer.Option(None, help="Rows to take from each file (all when omitted)."),
    rate: float = typer.Option(10.0, help="Events per second of event time."),
    speedup: float = typer.Option(0.0, help="Send this many times faster than event time; 0 sends as fast as possible."),
    seed: int = typer.Option(7, help="Seed of the row sampling."),
) -> None:
    """Produce files as inference events on a timeline that starts now."""
    from controlplane.replay import Timeline, build_segments_from_cli, ensure_topics
    from controlplane.replay import replay as run_replay

    settings = get_settings()
    segments = build_segments_from_cli(files, mapping, rows, rate, datetime.now(timezone.utc), seed)
    asyncio.run(ensure_topics(settings.kafka_bootstrap, {settings.topic_events: settings.topic_partitions}))
    stats = asyncio.run(run_replay(Timeline(segments), settings.kafka_bootstrap, settings.topic_events, speedup))
    for name, count in stats.produced.items():
        typer.echo(f"{name}: produced {count} events, skipped {stats.skipped.get(name, 0)} bad rows")
    typer.echo(f"produced {stats.total} events to {settings.topic_events} in {stats.elapsed_seconds:.1f}s")


@app.command()
def demo(
    headless: bool = typer.Option(False, "--headless", help="Exit when the scenario's findings are stored."),
    datasets: Path = typer.Option(Path("../shared/datasets"), help="Folder with the public datasets."),
    baseline: Optional[Path] = typer.Option(None, help="Baseline traffic file (default: codealpaca.jsonl)."),
    shift: Optional[list[Path]] = typer.Option(None, help="Shifted traffic files, mixed (default: role-play and red-team)."),
    timeout: float = typer.Option(600.0, help="Seconds to wait for the scenario's windows to close."),
) -> None:
    """Run the main scenario end to end: worker, replay, findings, summary."""
    from controlplane.demo import run_demo

    code = run_demo(headless=headless, datasets_dir=datasets, baseline=baseline, shift=shift, timeout_s=timeout)
    raise typer.Exit(code=code)


def _store():
    """Return a transaction on the configured database."""
    from controlplane.store.engine import get_engine, transaction

    return transaction(get_engine(get_settings().database_url))


def _os_user() -> str:
    import getpass
    import os

    try:
        return getpass.getuser()
    except (KeyError, OSError):  # no login name and no passwd entry, as in some containers
        return f"uid:{os.getuid()}"


def _when(moment: Optional[datetime]) -> str:
    from controlplane.windows import as_utc

    return as_utc(moment).strftime("%Y-%m-%d %H:%M:%S") if moment else "-"


BY_HELP = "Who acts, recorded on the row; the OS user when omitted."


@alerts_app.command("list")
def alerts_list(
    status: Optional[str] = typer.Option(None, help="Only alerts in this status (firing, acknowledged, resolved)."),
    limit: int = typer.Option(50, min=1, help="Maximum alerts shown."),
) -> None:
    """List alerts, newest first. SILENCED marks an alert that an active silence matches."""
    from sqlalchemy import select

    from controlplane.alerting import active_silences, silence_matches
    from controlplane.store.models import Alert

    query = select(Alert).order_by(Alert.last_seen.desc()).limit(limit)
    if status:
        query = query.where(Alert.status == status)
    with _store() as session:
        alerts = session.scalars(query).all()
        silences = active_silences(session)
        if not alerts:
            typer.echo("no alerts")
        for alert in alerts:
            silenced = " SILENCED" if any(silence_matches(silence, alert) for silence in silences) else ""
            typer.echo(
                f"{alert.id:>5}  {alert.status:<12} {alert.severity:<8} x{alert.occurrences:<4} "
                f"{alert.app}/{alert.model} {alert.kind}/{alert.subject}{silenced}  {alert.title}"
            )


@alerts_app.command("ack")
def alerts_ack(alert_id: int = typer.Argument(..., help="Alert id."), by: Optional[str] = typer.Option(None, help=BY_HELP)) -> None:
    """Acknowledge a firing alert: someone is on it, so no repeat notifications."""
    from controlplane.alerting import acknowledge

    with _store() as session:
        alert = acknowledge(session, alert_id, by or _os_user())
        typer.echo(f"alert {alert.id} acknowledged by {alert.acknowledged_by}")


@alerts_app.command("resolve")
def alerts_resolve(alert_id: int = typer.Argument(..., help="Alert id."), by: Optional[str] = typer.Option(None, help=BY_HELP)) -> None:
    """Resolve an open alert. The next finding with the same fingerprint opens a new one."""
    from controlplane.alerting import resolve

    with _store() as session:
        alert = resolve(session, alert_id, by or _os_user())
        typer.echo(f"alert {alert.id} resolved by {alert.resolved_by}")


@alerts_app.command("silence")
def alerts_silence(
    kind: Optional[str] = typer.Option(None, help="Finding kind pattern, e.g. safety, drift, cost."),
    subject: Optional[str] = typer.Option(None, help="Subject pattern, e.g. flagged_rate."),
    app_name: Optional[str] = typer.Option(None, "--app", help="Application pattern, e.g. 'assistant' or 'chat-*'."),
    model: Optional[str] = typer.Option(None, help="Model pattern."),
    duration: str = typer.Option("2h", "--for", help="How long the silence lasts: 90s, 30m, 2h, 1d, 1h30m."),
    comment: str = typer.Option("", help="Why, shown in 'alerts silences'."),
    by: Optional[str] = typer.Option(None, help=BY_HELP),
) -> None:
    """Silence matching alerts for a while: they send no notifications and start no jobs. The silence ends on its own."""
    from controlplane.alerting import create_silence, describe_matchers
    from controlplane.policies import parse_duration

    with _store() as session:
        silence = create_silence(
            session, created_by=by or _os_user(), duration=parse_duration(duration), comment=comment,
            kind=kind, subject=subject, app=app_name, model=model,
        )
        typer.echo(f"silence {silence.id} ({describe_matchers(silence)}) until {_when(silence.ends_at)} UTC")


@alerts_app.command("silences")
def alerts_silences() -> None:
    """List the active silences, the one ending last first."""
    from controlplane.alerting import active_silences, describe_matchers

    with _store() as session:
        silences = active_silences(session)
        if not silences:
            typer.echo("no active silences")
        for silence in silences:
            typer.echo(
                f"{silence.id:>5}  until {_when(silence.ends_at)}  {describe_matchers(silence)}  "
                f"by {silence.created_by}: {silence.comment or '-'}"
            )


@alerts_app.command("unsilence")
def alerts_unsilence(silence_id: int = typer.Argument(..., help="Silence id."), by: Optional[str] = typer.Option(None, help=BY_HELP)) -> None:
    """End a silence now."""
    from controlplane.alerting import expire_silence

    with _store() as session:
        silence = expire_silence(session, silence_id, by or _os_user())
        typer.echo(f"silence {silence.id} ended by {silence.expired_by}")


@jobs_app.command("list")
def jobs_list(
    status: Optional[str] = typer.Option(None, help="Only jobs in this status (awaiting_approval, pending, running, succeeded, failed, cancelled)."),
    limit: int = typer.Option(50, min=1, help="Maximum jobs shown."),
) -> None:
    """List jobs, newest first."""
    from sqlalchemy import select

    from controlplane.store.models import Job

    query = select(Job).order_by(Job.id.desc()).limit(limit)
    if status:
        query = query.where(Job.status == status)
    with _store() as session:
        jobs = session.scalars(query).all()
        if not jobs:
            typer.echo("no jobs")
        for job in jobs:
            typer.echo(
                f"{job.id:>5}  {job.kind:<17} {job.status:<17} created {_when(job.created_at)}  "
                f"alert {job.alert_id or '-'}  by {job.created_by or '-'}"
            )


@jobs_app.command("show")
def jobs_show(job_id: int = typer.Argument(..., help="Job id.")) -> None:
    """Show every field of a job, its parameters and its result."""
    import json

    from controlplane.jobs import get_job

    with _store() as session:
        job = get_job(session, job_id)
        for column in job.__table__.columns:
            value = getattr(job, column.name)
            shown = json.dumps(value, indent=2, default=str) if isinstance(value, (dict, list)) else value
            typer.echo(f"{column.name}: {shown if shown is not None else '-'}")


@jobs_app.command("approve")
def jobs_approve(job_id: int = typer.Argument(..., help="Job id."), by: Optional[str] = typer.Option(None, help=BY_HELP)) -> None:
    """Approve a job awaiting approval, so that the scheduler's job runner runs it."""
    from controlplane.jobs import approve_job

    with _store() as session:
        job = approve_job(session, job_id, by or _os_user())
        typer.echo(f"job {job.id} ({job.kind}) approved by {job.approved_by}; now {job.status}")


@jobs_app.command("cancel")
def jobs_cancel(job_id: int = typer.Argument(..., help="Job id."), by: Optional[str] = typer.Option(None, help=BY_HELP)) -> None:
    """Cancel a job that has not finished. A running job stops when its function checks for cancellation."""
    from controlplane.jobs import cancel_job

    with _store() as session:
        job = cancel_job(session, job_id, by or _os_user())
        typer.echo(f"job {job.id} ({job.kind}) cancelled by {job.cancelled_by}")


@jobs_app.command("retry")
def jobs_retry(job_id: int = typer.Argument(..., help="Job id."), by: Optional[str] = typer.Option(None, help=BY_HELP)) -> None:
    """Queue a failed job again, with a fresh count of attempts."""
    from controlplane.jobs import retry_job

    actor = by or _os_user()
    with _store() as session:
        job = retry_job(session, job_id, actor)
        typer.echo(f"job {job.id} ({job.kind}) queued again by {actor}")


@app.command()
def scheduler(loglevel: str = typer.Option("info", help="Log level: debug, info, warning, error.")) -> None:
    """Run the periodic tasks: job rules, jobs, notifications, nightly curation, retention. One process is active at a time."""
    from controlplane.scheduler import run_scheduler

    logging.getLogger().setLevel(loglevel.upper())
    # APScheduler logs every run at INFO, and the scheduler logs its own line per unit of work.
    logging.getLogger("apscheduler").setLevel(logging.WARNING)
    run_scheduler(get_settings())


@app.command()
def dashboard(
    address: Optional[str] = typer.Option(None, help="Address to listen on; CONTROLPLANE_DASHBOARD_ADDRESS when omitted."),
    port: Optional[int] = typer.Option(None, help="TCP port to listen on; CONTROLPLANE_DASHBOARD_PORT when omitted."),
) -> None:
    """Serve the Streamlit dashboard, headless; beyond localhost it needs a password hash."""
    import os

    import dashboards
    from controlplane.auth import check_exposure
    from controlplane.store.migrate import check_current

    settings = get_settings().model_copy(
        update={"dashboard_address": address or get_settings().dashboard_address, "dashboard_port": port or get_settings().dashboard_port}
    )
    check_exposure(settings)
    check_current(settings.database_url)
    script = Path(dashboards.__file__).resolve().parent / "app.py"
    # The app reads the address again to decide whether a login is required, so an option overrides the setting there too.
    env = {**os.environ, "CONTROLPLANE_DASHBOARD_ADDRESS": settings.dashboard_address, "CONTROLPLANE_DASHBOARD_PORT": str(settings.dashboard_port)}
    command = [
        sys.executable, "-m", "streamlit", "run", str(script),
        "--server.address", settings.dashboard_address, "--server.port", str(settings.dashboard_port),
        "--server.headless", "true", "--server.fileWatcherType", "none",
        "--browser.gatherUsageStats", "false", "--client.toolbarMode", "viewer",
    ]
    typer.echo(f"dashboard on http://{settings.dashboard_address}:{settings.dashboard_port}")
    sys.stdout.flush()
    # exec, not a child process: a signal to this process reaches the server directly.
    os.execve(sys.executable, command, env)


@app.command("hash-password")
def hash_password_command(
    stdin: bool = typer.Option(False, "--stdin", help="Read the password from the first line of standard input instead of a prompt."),
) -> None:
    """Print a scrypt hash for CONTROLPLANE_DASHBOARD_PASSWORD_HASH or CONTROLPLANE_DASHBOARD_VIEWER_PASSWORD_HASH."""
    from controlplane.auth import hash_password

    if stdin:
        password = sys.stdin.readline().rstrip("\r\n")
    else:
        password = typer.prompt("Password", hide_input=True, confirmation_prompt=True)
    typer.echo(hash_password(password))


datasets_app = typer.Typer(help="List dataset versions, or build one from flagged interactions by hand.", no_args_is_help=True)
models_app = typer.Typer(help="List LoRA adapters, promote one, or roll back to the previous one.", no_args_is_help=True)
app.add_typer(datasets_app, name="datasets")
app.add_typer(models_app, name="models")

SINCE_HELP = "Start of the event-time range, ISO 8601 (UTC when no offset is given), e.g. 2026-12-01T10:00Z."
UNTIL_HELP = "End of the event-time range, exclusive, ISO 8601; now when omitted."
KIND_HELP = "Detector or span label to keep, e.g. toxicity, pii or EMAIL_ADDRESS; repeat for several."
LABEL_HELP = "Review label to keep, e.g. incorrect; repeat for several."


@app.command("export")
def export_command(
    since: str = typer.Option(..., help=SINCE_HELP),
    until: Optional[str] = typer.Option(None, help=UNTIL_HELP),
    kind: Optional[list[str]] = typer.Option(None, "--kind", help=KIND_HELP),
    label: Optional[list[str]] = typer.Option(None, "--label", help=LABEL_HELP),
    model: Optional[str] = typer.Option(None, help="Only interactions of this model."),
    app_name: Optional[str] = typer.Option(None, "--app", help="Only interactions of this app."),
    fmt: str = typer.Option("jsonl", "--format", help="File format: jsonl (OpenAI chat format), parquet or csv (UTF-8 with BOM)."),
    out: Path = typer.Option(Path("."), "--out", file_okay=False, help="Folder the file is written to; created when missing."),
    no_scrub: bool = typer.Option(False, "--no-scrub", help="Keep personal data instead of replacing it with placeholders such as <EMAIL_ADDRESS>."),
) -> None:
    """Write flagged interactions of a time range to one file, personal data scrubbed unless --no-scrub."""
    from controlplane.export import FlaggedFilter, export_flagged
    from controlplane.store.engine import get_engine

    selection = FlaggedFilter(since, until or datetime.now(timezone.utc), app_name, model, tuple(kind or ()), tuple(label or ()))
    result = export_flagged(get_engine(get_settings().database_url), out, selection, fmt, scrub=not no_scrub)
    scrubbed = f", {sum(result.pii_replaced.values())} PII spans replaced" if result.scrubbed else ", not scrubbed"
    typer.echo(f"{result.rows} rows written to {result.path}{scrubbed}")


@datasets_app.command("list")
def datasets_list(name: Optional[str] = typer.Option(None, help="Only versions of this dataset name.")) -> None:
    """List dataset versions, newest first."""
    from sqlalchemy import select

    from controlplane.store.registry_models import DatasetVersion

    query = select(DatasetVersion).order_by(DatasetVersion.created_at.desc(), DatasetVersion.id.desc())
    if name:
        query = query.where(DatasetVersion.name == name)
    with _store() as session:
        datasets = session.scalars(query).all()
    if not datasets:
        typer.echo("no dataset versions")
    for dataset in datasets:
        typer.echo(
            f"{dataset.id:>5}  {dataset.name} v{dataset.version:<4} {_when(dataset.created_at)}  train {dataset.train_count:<6} "
            f"eval {dataset.eval_count:<6} pairs {dataset.preference_count:<5} alert {dataset.source_alert_id or '-'}  {dataset.path}"
        )


@datasets_app.command("build")
def datasets_build(
    since: str = typer.Option(..., help=SINCE_HELP),
    until: Optional[str] = typer.Option(None, help=UNTIL_HELP),
    name: Optional[str] = typer.Option(None, help="Dataset name; APP-MODEL (or all-all) when omitted."),
    app_name: Optional[str] = typer.Option(None, "--app", help="Only interactions of this app."),
    model: Optional[str] = typer.Option(None, help="Only interactions of this model."),
    kind: Optional[list[str]] = typer.Option(None, "--kind", help=KIND_HELP),
    label: Optional[list[str]] = typer.Option(None, "--label", help=LABEL_HELP),
    eval_fraction: float = typer.Option(0.2, help="Share of prompt clusters put in the eval split, between 0 and 1."),
    alert_id: Optional[int] = typer.Option(None, help="Alert that prompted this dataset, recorded in its lineage; its app and model fill --app and --model."),
) -> None:
    """Curate flagged interactions and corrections of a time range into a new dataset version."""
    from controlplane.curation import run_curation
    from controlplane.store.engine import get_engine

    params = {"since": since, "until": until, "name": name, "app": app_name, "model": model, "kinds": kind,
              "labels": label, "eval_fraction": eval_fraction, "alert_id": alert_id}
    # Options left out stay out of the params, so that an alert's app and model fill them.
    params = {key: value for key, value in params.items() if value is not None}
    result = run_curation(get_engine(get_settings().database_url), params)
    typer.echo(
        f"dataset version {result['dataset_version_id']}: {result['name']} v{result['version']}, {result['selected']} selected, "
        f"{result['train']} train, {result['eval']} eval, {result['preference_pairs']} preference pairs, at {result['path']}"
    )


@models_app.command("list")
def models_list(name: Optional[str] = typer.Option(None, help="Only adapters of this name.")) -> None:
    """List adapters, newest first, with the verdict of their latest evaluation report."""
    from sqlalchemy import select

    from controlplane.store.registry_models import EvaluationReport, ModelVersion

    query = select(ModelVersion).order_by(ModelVersion.created_at.desc(), ModelVersion.id.desc())
    if name:
        query = query.where(ModelVersion.name == name)
    with _store() as session:
        models = session.scalars(query).all()
        verdicts = {
            report.model_version_id: "passed" if report.passed else "failed"
            for report in session.scalars(select(EvaluationReport).order_by(EvaluationReport.id))
        }
    if not models:
        typer.echo("no adapters")
    for model in models:
        typer.echo(
            f"{model.id:>5}  {model.name} v{model.version:<4} {model.status:<10} gate {verdicts.get(model.id, '-'):<7} "
            f"dataset {model.dataset_version_id:<5} {_when(model.created_at)}  {model.adapter_path}"
        )


@models_app.command("promote")
def models_promote(
    model_version_id: int = typer.Argument(..., help="Model version id, from 'controlplane models list'."),
    by: Optional[str] = typer.Option(None, help=BY_HELP),
    reason: str = typer.Option("", help="Why, recorded on the promotion."),
    report: Optional[int] = typer.Option(None, help="Evaluation report to rely on; the adapter's latest when omitted."),
) -> None:
    """Promote an adapter whose evaluation report passed; the promoted one it replaces is retired."""
    from controlplane.finetune.registry import promote
    from controlplane.store.engine import get_engine

    promotion = promote(get_engine(get_settings().database_url), model_version_id, by or _os_user(), reason, report)
    previous = promotion.previous_model_version_id or "the base model"
    typer.echo(f"model version {model_version_id} promoted (promotion {promotion.id}), replacing {previous}")


@models_app.command("rollback")
def models_rollback(
    by: Optional[str] = typer.Option(None, help=BY_HELP),
    name: Optional[str] = typer.Option(None, help="Adapter name; needed only when several names have a promoted adapter."),
    reason: str = typer.Option("", help="Why, recorded on the rollback."),
) -> None:
    """Restore the adapter promoted before the current one, and mark the current one rejected."""
    from controlplane.finetune.registry import rollback
    from controlplane.store.engine import get_engine

    promotion = rollback(get_engine(get_settings().database_url), by or _os_user(), name, reason)
    typer.echo(
        f"rolled back from model version {promotion.previous_model_version_id} to {promotion.model_version_id} "
        f"(promotion {promotion.id})"
    )


reference_app = typer.Typer(help="Show drift references, or make a closed window the reference.", no_args_is_help=True)
app.add_typer(reference_app, name="reference")


def _parse_instant(value: str, option: str) -> datetime:
    try:
        moment = datetime.fromisoformat(value)
    except ValueError:
        _fail(f"invalid {option} {value!r}: expected ISO 8601, e.g. 2026-12-01T10:00:00Z")
    return moment if moment.tzinfo else moment.replace(tzinfo=timezone.utc)


@reference_app.command("promote")
def reference_promote(
    app_name: str = typer.Option(..., "--app", help="App of the window."),
    model: str = typer.Option(..., help="Model of the window."),
    window_start: str = typer.Option(..., help="Start of the closed window, or any instant inside it, ISO 8601 (UTC when no offset)."),
    model_version: Optional[str] = typer.Option(
        None, help="Model version whose reference to replace; the window's most frequent version when omitted."
    ),
    by: Optional[str] = typer.Option(None, help=BY_HELP),
) -> None:
    """Make a closed window's statistics the reference that later windows are compared with."""
    from controlplane.store.drift_models import promote_window
    from controlplane.windows import window_start as start_of

    settings = get_settings()
    start = start_of(_parse_instant(window_start, "--window-start"), settings.window_seconds)
    with _store() as session:
        reference = promote_window(session, app_name, model, start, model_version, by or _os_user(), settings.drift_min_rows)
        version = reference.model_version or "(none)"
        typer.echo(
            f"reference of {app_name}/{model} version {version} is now the window starting {_when(start)} UTC "
            f"({reference.event_count} events, text fields: {', '.join(sorted(reference.profile.get('text', {}))) or 'none'})"
        )


@reference_app.command("show")
def reference_show(
    app_name: Optional[str] = typer.Option(None, "--app", help="Only references of this app."),
    model: Optional[str] = typer.Option(None, help="Only references of this model."),
    windows: int = typer.Option(0, min=0, help="Also list this many newest closed windows that can be promoted."),
) -> None:
    """List the references in use, and optionally the newest windows that can become one."""
    from sqlalchemy import select

    from controlplane.store.drift_models import ReferenceProfile, WindowProfile

    def matching(query, table):
        if app_name:
            query = query.where(table.app == app_name)
        return query.where(table.model == model) if model else query

    with _store() as session:
        references = session.scalars(matching(select(ReferenceProfile), ReferenceProfile).order_by(
            ReferenceProfile.app, ReferenceProfile.model, ReferenceProfile.model_version)).all()
        if not references:
            typer.echo("no references: the first window with enough events of each app, model and version becomes one")
        for ref in references:
            text = ", ".join(sorted(ref.profile.get("text", {}))) or "none"
            typer.echo(
                f"{ref.app}/{ref.model} version {ref.model_version or '(none)'}: window {_when(ref.source_window_start)} UTC, "
                f"{ref.event_count} events, text {text}, {ref.source} {_when(ref.created_at)} by {ref.created_by or 'the worker'}"
            )
        if windows:
            rows = session.scalars(matching(select(WindowProfile), WindowProfile).order_by(
                WindowProfile.window_start.desc()).limit(windows)).all()
            typer.echo(f"newest {len(rows)} closed windows with a stored profile:")
            for row in rows:
                typer.echo(f"  {_when(row.window_start)} UTC  {row.app}/{row.model} version {row.model_version or '(none)'}  "
                           f"{row.event_count} events")


def main() -> None:
    """Entry point of the console script: errors of this package print one line, not a traceback."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("alembic").setLevel(logging.WARNING)
    try:
        app()
    except ControlPlaneError as exc:
        typer.secho(f"error: {exc}", fg=typer.colors.RED, err=True)
        sys.exit(1)
