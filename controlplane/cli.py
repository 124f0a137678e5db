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
alerts_app = typer.Typer(help="List alerts.", no_args_is_help=True)
jobs_app = typer.Typer(help="List curation and fine-tuning jobs.", no_args_is_help=True)
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

    from controlplane.replay import ensure_topics
    from controlplane.store.migrate import check_current
    from streams.app import create_app

    settings = get_settings()
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
    timeout: float = typer.Option(300.0, help="Seconds to wait for the scenario's windows to close."),
) -> None:
    """Run the main scenario end to end: worker, replay, findings, summary."""
    from controlplane.demo import run_demo

    code = run_demo(headless=headless, datasets_dir=datasets, baseline=baseline, shift=shift, timeout_s=timeout)
    raise typer.Exit(code=code)


@alerts_app.command("list")
def alerts_list(status: Optional[str] = typer.Option(None, help="Only alerts in this status (firing, acknowledged, resolved).")) -> None:
    """List alerts, newest first."""
    from sqlalchemy import select

    from controlplane.store.engine import get_engine, transaction
    from controlplane.store.models import Alert

    query = select(Alert).order_by(Alert.last_seen.desc())
    if status:
        query = query.where(Alert.status == status)
    with transaction(get_engine(get_settings().database_url)) as session:
        alerts = session.scalars(query).all()
        if not alerts:
            typer.echo("no alerts")
        for alert in alerts:
            typer.echo(f"{alert.id:>5}  {alert.status:<12} {alert.severity:<8} x{alert.occurrences:<4} {alert.app}/{alert.model}  {alert.title}")


@jobs_app.command("list")
def jobs_list() -> None:
    """List jobs, newest first."""
    from sqlalchemy import select

    from controlplane.store.engine import get_engine, transaction
    from controlplane.store.models import Job

    with transaction(get_engine(get_settings().database_url)) as session:
        jobs = session.scalars(select(Job).order_by(Job.created_at.desc())).all()
        if not jobs:
            typer.echo("no jobs")
        for job in jobs:
            typer.echo(f"{job.id:>5}  {job.kind:<10} {job.status:<10} created {job.created_at:%Y-%m-%d %H:%M:%S}")


def main() -> None:
    """Entry point of the console script: errors of this package print one line, not a traceback."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("alembic").setLevel(logging.WARNING)
    try:
        app()
    except ControlPlaneError as exc:
        typer.secho(f"error: {exc}", fg=typer.colors.RED, err=True)
        sys.exit(1)
