"""`controlplane demo`: the main job end to end on real public data.

It starts a worker process on a fresh SQLite store and replays a baseline of code-assistant
traffic, then a shift: role-play traffic mixed with red-team dialogues. Once every window of the
scenario is closed, it prints the findings and checks them against the expected outcome.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from pathlib import Path

import typer
from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from controlplane.errors import ConfigurationError
from controlplane.auth import User
from controlplane.replay import Timeline, ensure_topics, read_rows, replay, split_dialogue
from controlplane.store.actions import label_flagged
from controlplane.scenario import BASELINE_FILE, RED_TEAM_MAPPING, ScenarioSource, demo_scenario, shift_scenario
from controlplane.demo_loop import configure as configure_loop
from controlplane.demo_loop import run_loop
from controlplane.settings import Settings, get_settings
from controlplane.store.engine import make_engine
from controlplane.store.migrate import upgrade
from controlplane.store.models import (
    Alert,
    ConsumerOffset,
    DeadLetter,
    Finding,
    FlaggedInteraction,
    WindowEvent,
    WindowStats,
)
from controlplane.windows import as_utc, window_start

STATE_DIR = Path(".demo")
WINDOW_S = 60.0
EVENTS_PER_WINDOW = 300
BASELINE_WINDOWS = 6
SHIFT_WINDOWS = 4
SPEEDUP = 30.0


@dataclass
class ScenarioLedger:
    """Record of the replayed events by segment, for checking the outcome."""

    shift_start: datetime | None = None
    segment_of: dict[str, str] = field(default_factory=dict)
    red_team_ids: set[str] = field(default_factory=set)
    source_rows: dict[str, tuple[str, int]] = field(default_factory=dict)

    def record(self, event) -> None:
        segment = event.metadata.get("scenario_segment", "baseline")
        self.segment_of[event.event_id] = segment
        if segment == "shift" and self.shift_start is None:
            self.shift_start = event.timestamp
        if event.messages:  # only the dialogue extractor produces chat messages
            self.red_team_ids.add(event.event_id)
            self.source_rows[event.event_id] = (event.metadata["replay_source"], event.metadata["replay_row"])


def demo_settings(database_url: str) -> Settings:
    """Settings of the demo worker: the environment's, with one-minute windows closing 5 s after traffic stops.

    Per-event embeddings are off, so that the worker keeps up with the replay on two cores (with
    them, about 40 events a second there, and a window would close before its last events came
    in). Text drift still embeds each window's sample when the window closes.
    """
    return Settings().model_copy(
        update={
            "database_url": database_url,
            "consumer_group": "controlplane-demo",
            "window_seconds": WINDOW_S,
            "window_grace_seconds": 5.0,
            "window_idle_close_seconds": 5.0,
            "safety_embeddings": False,
        }
    )


def run_demo(headless: bool, datasets_dir: Path, baseline: Path | None, shift: list[Path] | None, timeout_s: float) -> int:
    """Run the scenario; return the process exit code."""
    STATE_DIR.mkdir(exist_ok=True)
    configure_loop(STATE_DIR)
    db_path = (STATE_DIR / "demo.db").resolve()
    for suffix in ("", "-wal", "-shm"):
        Path(f"{db_path}{suffix}").unlink(missing_ok=True)
    settings = demo_settings(f"sqlite:///{db_path}")

    # The timeline covers the minutes just before now, like a replay of recent traffic: event
    # times then never lie in the future, where time-range queries (curation) would miss them.
    now = datetime.now(timezone.utc)
    span = timedelta(seconds=WINDOW_S * (BASELINE_WINDOWS + SHIFT_WINDOWS + 1))
    start = window_start(now - span, WINDOW_S)
    sizes = {"windows_baseline": BASELINE_WINDOWS, "windows_shift": SHIFT_WINDOWS,
             "events_per_window": EVENTS_PER_WINDOW, "window_seconds": WINDOW_S, "start": start}
    if baseline is None and not shift:
        segments = demo_scenario(datasets_dir, **sizes)
    else:
        segments = shift_scenario(
            baseline=[ScenarioSource(baseline or datasets_dir / BASELINE_FILE)],
            shift=[_user_source(path) for path in (shift or [])],
            **sizes,
        )
    _step(f"store: {settings.database_url}")
    upgrade(settings.database_url)
    topics = {settings.topic_events: settings.topic_partitions, settings.topic_dlq: settings.topic_partitions,
              settings.topic_findings: 1, settings.topic_alerts: 1}
    asyncio.run(ensure_topics(settings.kafka_bootstrap, topics))
    _step(f"kafka: {settings.kafka_bootstrap}, topic {settings.topic_events}")

    _start_at_topic_end(settings)
    worker = _start_worker(settings)
    try:
        ledger = ScenarioLedger()
        events = list(Timeline(segments, now=start))
        for event in events:
            ledger.record(event)
        _step(f"replaying {len(events)} events ({BASELINE_WINDOWS} baseline and {SHIFT_WINDOWS} shifted windows of "
              f"{WINDOW_S:.0f}s), {SPEEDUP:.0f}x faster than event time")
        stats = asyncio.run(replay(events, settings.kafka_bootstrap, settings.topic_events, SPEEDUP))
        _step(f"produced {stats.total} events in {stats.elapsed_seconds:.1f}s; waiting for the worker")
        engine = make_engine(settings.database_url)
        done = _wait_until_stored(engine, start, stats.total, timeout_s, worker)
        if not done:
            typer.secho(f"error: not every window closed within {timeout_s:.0f}s; see {STATE_DIR / 'worker.log'}",
                        fg=typer.colors.RED, err=True)
            return 1
        failures = _report(engine, start, ledger)
        _label_red_team(engine, ledger, [datasets_dir, *(path.parent for path in shift or [])])
        failures += _improve(engine)
        if headless:
            return 1 if failures else 0
        dashboard = _start_dashboard(settings)
        _step("the worker keeps running; press Ctrl-C to stop")
        try:
            while worker.poll() is None:
                time.sleep(1)
        finally:
            _stop(dashboard)
        return worker.returncode or 0
    except KeyboardInterrupt:
        return 0
    finally:
        _stop(worker)


def _label_red_team(engine, ledger: ScenarioLedger, folders: list[Path]) -> None:
    # Stands in for the product team: each flagged red-team answer is labelled incorrect, with
    # the dialogue's less harmful answer ("chosen" in hh-rlhf) as the written correction.
    flagged = {row.event_id: row.id for row in get_flagged_by_event(engine, ledger.red_team_ids)}
    by_file: dict[str, dict[int, str]] = {}
    for event_id in flagged:
        name, row = ledger.source_rows[event_id]
        by_file.setdefault(name, {})[row] = event_id
    labelled = 0
    user = User(name="demo-product-team", role="operator")
    for name, rows in by_file.items():
        path = next((folder / name for folder in folders if (folder / name).is_file()), None)
        if path is None:
            continue
        for item in read_rows(path):
            if getattr(item, "index", None) in rows and "chosen" in item.data:
                _, correction = split_dialogue(item.data["chosen"])
                labelled += label_flagged(engine, [flagged[rows[item.index]]], "incorrect", correction, user)
    _step(f"labelled {labelled} flagged red-team answers as incorrect, with the less harmful answer as correction")


def _improve(engine) -> list[str]:
    _step("improvement loop: policy -> curation -> LoRA fine-tune of a tiny local model -> gate -> promotion")
    summary = run_loop(engine, get_settings(), STATE_DIR)
    for job in summary.jobs:
        parent = f", after job {job['parent_job_id']}" if job["parent_job_id"] else ""
        error = f": {job['error']}" if job["error"] else ""
        typer.echo(f"  job {job['id']} {job['kind']:<10} {job['status']:<10} alert {job['alert_id']}{parent}{error}")
    failures = []
    if summary.curation is None:
        failures.append("no curation job succeeded")
    else:
        c = summary.curation
        typer.echo(f"  dataset version {c['name']} v{c['version']}: {c['selected']} selected, {c['train']} train, "
                   f"{c['eval']} eval, {c['preference_pairs']} preference pairs ({c['path']})")
    if summary.fine_tune is None:
        failures.append("no fine-tune job succeeded")
    else:
        f = summary.fine_tune
        decision = "promoted" if f.get("promotion_id") else "not promoted"
        typer.echo(f"  adapter {f['name']} v{f['version']}: final loss {f['final_loss']:.3f}, "
                   f"gate {'passed' if f['passed'] else 'failed'}, {decision}")
        for reason in f.get("reasons") or []:
            typer.echo(f"    {reason}")
    return failures


def _user_source(path: Path) -> ScenarioSource:
    # Dialogue files in the hh-rlhf layout keep their own extractor; others are instruction files.
    if path.name.startswith("hh_rlhf"):
        return ScenarioSource(path, RED_TEAM_MAPPING)
    return ScenarioSource(path)


def get_flagged_by_event(engine, event_ids: set[str]) -> list[FlaggedInteraction]:
    """Return the flagged interactions of the given events."""
    with Session(engine) as session:
        return list(session.scalars(select(FlaggedInteraction).where(FlaggedInteraction.event_id.in_(event_ids))))


def _start_at_topic_end(settings: Settings) -> None:
    # The fresh store must not take in events that earlier runs left in the topic: storing the
    # topic's end offsets makes the worker skip everything produced before this run.
    end_offsets = asyncio.run(_end_offsets(settings.kafka_bootstrap, settings.topic_events))
    engine = make_engine(settings.database_url)
    with engine.begin() as connection:
        for partition, offset in end_offsets.items():
            connection.execute(
                ConsumerOffset.__table__.insert().values(
                    group_id=settings.consumer_group, topic=settings.topic_events, partition=partition,
                    next_offset=offset, updated_at=datetime.now(timezone.utc),
                )
            )
    engine.dispose()


async def _end_offsets(bootstrap: str, topic: str) -> dict[int, int]:
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        (description,) = await admin.describe_topics([topic])
    finally:
        await admin.close()
    partitions = [TopicPartition(topic, item["partition"]) for item in description["partitions"]]
    if not partitions:
        raise ConfigurationError(f"topic {topic} has no partitions on {bootstrap}")
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False)
    await consumer.start()
    try:
        ends = await consumer.end_offsets(partitions)
    finally:
        await consumer.stop()
    return {tp.partition: offset for tp, offset in ends.items()}


def _step(message: str) -> None:
    typer.secho(f"==> {message}", fg=typer.colors.CYAN)


def _start_worker(settings: Settings) -> subprocess.Popen:
    env = {key: value for key, value in os.environ.items() if not key.startswith("CONTROLPLANE_")}
    for name, value in settings.model_dump(mode="json", exclude_none=True).items():
        # pydantic-settings reads lists and dicts from the environment as JSON.
        env[f"CONTROLPLANE_{name.upper()}"] = json.dumps(value) if isinstance(value, (list, dict)) else str(value)
    log_path = STATE_DIR / "worker.log"
    _step(f"starting the worker (log: {log_path})")
    with log_path.open("wb") as log:
        return subprocess.Popen([sys.executable, "-m", "controlplane", "worker"], env=env, stdout=log, stderr=subprocess.STDOUT)


def _start_dashboard(settings: Settings) -> subprocess.Popen:
    env = {key: value for key, value in os.environ.items() if not key.startswith("CONTROLPLANE_")}
    env["CONTROLPLANE_DATABASE_URL"] = settings.database_url
    env["CONTROLPLANE_KAFKA_BOOTSTRAP"] = settings.kafka_bootstrap
    env["CONTROLPLANE_CONSUMER_GROUP"] = settings.consumer_group
    log_path = STATE_DIR / "dashboard.log"
    with log_path.open("wb") as log:
        process = subprocess.Popen([sys.executable, "-m", "controlplane", "dashboard"], env=env, stdout=log,
                                   stderr=subprocess.STDOUT)
    _step(f"dashboard: http://{settings.dashboard_address}:{settings.dashboard_port} (log: {log_path})")
    return process


def _stop(worker: subprocess.Popen) -> None:
    if worker.poll() is None:
        worker.send_signal(signal.SIGTERM)
        try:
            worker.wait(timeout=30)
        except subprocess.TimeoutExpired:
            worker.kill()


def _wait_until_stored(engine, start: datetime, produced: int, timeout_s: float, worker: subprocess.Popen) -> bool:
    deadline = time.monotonic() + timeout_s
    last = -1
    while time.monotonic() < deadline:
        if worker.poll() is not None:
            raise ConfigurationError(f"the worker exited with code {worker.returncode}; see {STATE_DIR / 'worker.log'}")
        with engine.connect() as connection:
            windowed = connection.scalar(
                select(func.coalesce(func.sum(WindowStats.event_count), 0)).where(WindowStats.window_start >= start)
            )
            buffered = connection.scalar(select(func.count()).select_from(WindowEvent))
            rejected = connection.scalar(select(func.count()).select_from(DeadLetter))
        if windowed + rejected >= produced and buffered == 0:
            return True
        if windowed != last:
            _step(f"{windowed} of {produced} events in closed windows, {buffered} buffered")
            last = windowed
        time.sleep(1)
    return False


def _report(engine, start: datetime, ledger: ScenarioLedger) -> list[str]:
    with Session(engine) as session:
        windows = session.scalars(
            select(WindowStats).where(WindowStats.window_start >= start).order_by(WindowStats.window_start)
        ).all()
        findings = session.scalars(select(Finding).order_by(Finding.window_start, Finding.kind)).all()
        alerts = session.scalars(select(Alert).order_by(Alert.first_seen)).all()
        flagged_ids = set(session.scalars(select(FlaggedInteraction.event_id)))
    shift_start = ledger.shift_start or datetime.max.replace(tzinfo=timezone.utc)

    def segment(window_begin: datetime) -> str:
        return "shift" if as_utc(window_begin) + timedelta(seconds=WINDOW_S) > shift_start else "baseline"

    typer.echo("")
    typer.echo(f"{'window (UTC)':<18}{'part':<10}{'events':>7}{'drift':>15}{'share':>7}{'flagged':>9}{'toxic':>7}{'pii':>5}{'cost $':>10}")
    for w in windows:
        share = "" if w.drift_share is None else f"{w.drift_share:.2f}"
        cost = "unknown" if w.cost_usd is None else f"{w.cost_usd:.4f}"
        typer.echo(f"{as_utc(w.window_start):%Y-%m-%d %H:%M}  {segment(w.window_start):<10}{w.event_count:>7}"
                   f"{w.drift_status:>15}{share:>7}{w.flagged_count:>9}{w.toxic_count:>7}{w.pii_count:>5}{cost:>10}")
    typer.echo("")
    typer.echo("findings:")
    for f in findings:
        typer.echo(f"  {as_utc(f.window_start):%H:%M} {segment(f.window_start):<9}{f.kind:<8}{f.severity:<9}{f.summary}")
    typer.echo(f"alerts: {len(alerts)} ({', '.join(sorted({a.title[:60] for a in alerts})) or 'none'})")

    red_team_flagged = len(ledger.red_team_ids & flagged_ids)
    baseline_ids = {eid for eid, seg in ledger.segment_of.items() if seg == "baseline"}
    typer.echo(f"red-team rows flagged: {red_team_flagged} of {len(ledger.red_team_ids)}; "
               f"baseline rows flagged: {len(baseline_ids & flagged_ids)} of {len(baseline_ids)}")

    drift_windows = {segment(f.window_start) for f in findings if f.kind == "drift"}
    failures = []
    if "baseline" in drift_windows:
        failures.append("a baseline window has a drift finding")
    if "shift" not in drift_windows:
        failures.append("no drift finding in the shifted part")
    if red_team_flagged == 0:
        failures.append("no red-team row was flagged by the safety detectors")
    for failure in failures:
        typer.secho(f"check failed: {failure}", fg=typer.colors.RED, err=True)
    if not failures:
        typer.secho("all checks passed: drift found in the shifted part only, red-team rows flagged", fg=typer.colors.GREEN)
    return failures
