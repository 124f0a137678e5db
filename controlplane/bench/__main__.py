"""Run the benchmarks, print a table and write results/bench.json.

    python -m controlplane.bench [--events N] [--rss-events N] [--skip PART ...]

Each part starts its own worker process on its own topics and a fresh SQLite store, against the
broker at CONTROLPLANE_KAFKA_BOOTSTRAP (make bench starts one on 127.0.0.1).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import platform
import statistics
import time
import uuid
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from aiokafka import AIOKafkaProducer

from controlplane.bench import stream, traffic
from controlplane.events.decode import encode_event
from controlplane.settings import get_settings

log = logging.getLogger("controlplane.bench")
RESULTS = Path("results")


def main() -> None:
    """Parse arguments, run each part and write the report."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--events", type=int, default=200_000, help="events for the throughput parts (default 200,000)")
    parser.add_argument("--rss-events", type=int, default=1_000_000, help="events of the memory run (default 1,000,000)")
    parser.add_argument("--partitions", type=int, default=4, help="partitions of the benchmark topics")
    parser.add_argument("--skip", nargs="*", default=[], choices=["throughput", "latency", "drift", "memory", "dashboard"])
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")

    datasets = Path(os.environ.get("CONTROLPLANE_DATASETS", "../shared/datasets"))
    bootstrap = get_settings().kafka_bootstrap
    pairs = traffic.load_pairs(datasets)
    report: dict[str, Any] = {
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version(), "platform": platform.platform()},
        "started_at": datetime.now(timezone.utc).isoformat(),
    }
    if "throughput" not in args.skip:
        report.update(throughput(bootstrap, pairs, args.events, args.partitions))
    if "latency" not in args.skip:
        report.update(latency(bootstrap, pairs, args.partitions))
    if "drift" not in args.skip:
        from controlplane.bench.drift import drift_timings

        report["drift_s"] = drift_timings(pairs)
    if "memory" not in args.skip:
        report.update(memory(bootstrap, pairs, args.rss_events, args.partitions))
    if "dashboard" not in args.skip:
        try:
            from controlplane.bench.dashboard import dashboard_timings
        except ImportError as exc:
            log.warning("dashboard timing skipped: %s", exc)
        else:
            report["dashboard_page_s"] = dashboard_timings()

    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "bench.json").write_text(json.dumps(report, indent=2) + "\n")
    print_table(report)


def _produce(bootstrap: str, prefix: str, pairs, count: int, partitions: int) -> float:
    stream_ = traffic.encoded(traffic.events(pairs, count, traffic.now_utc(), rate=1000.0))
    produced, seconds = asyncio.run(traffic.produce_encoded(bootstrap, f"{prefix}.events", partitions, stream_))
    log.info("produced %d events in %.1fs (%.0f/s)", produced, seconds, produced / seconds)
    return seconds


def throughput(bootstrap: str, pairs, count: int, partitions: int) -> dict[str, Any]:
    """Ceiling and pipeline events per second on one topic of `count` events."""
    prefix = f"bench-{uuid.uuid4().hex[:8]}"
    _produce(bootstrap, prefix, pairs, count, partitions)
    ceiling = stream.ceiling_eps(bootstrap, f"{prefix}.events", count)
    directory = stream.temp_dir()
    env = stream.worker_env(bootstrap, stream.fresh_sqlite(directory), prefix, window_seconds="60")
    run = stream.run_worker(env, count, directory / "worker.log", timeout_s=3600)
    return {
        "events": count,
        "ceiling_eps": round(ceiling),
        "pipeline_eps": round(run.eps),
        "pipeline_ratio": round(run.eps / ceiling, 4),
    }


def memory(bootstrap: str, pairs, count: int, partitions: int) -> dict[str, Any]:
    """Peak and final worker RSS over a run of `count` events."""
    prefix = f"bench-{uuid.uuid4().hex[:8]}"
    _produce(bootstrap, prefix, pairs, count, partitions)
    directory = stream.temp_dir()
    env = stream.worker_env(bootstrap, stream.fresh_sqlite(directory), prefix, window_seconds="60")
    run = stream.run_worker(env, count, directory / "worker.log", timeout_s=4 * 3600)
    step = max(1, len(run.rss_samples_mb) // 10)
    return {
        "worker_rss_mb": {
            "events": count,
            "peak": round(run.rss_peak_mb, 1),
            "final": round(run.rss_final_mb, 1),
            "samples": [[stored, round(rss, 1)] for stored, rss in run.rss_samples_mb[::step]],
        }
    }


async def _steady(bootstrap: str, topic: str, pairs, rate: float, seconds: float) -> int:
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks=1, linger_ms=5)
    await producer.start()
    sent = 0
    began = time.monotonic()
    try:
        while time.monotonic() - began < seconds:
            due = int((time.monotonic() - began) * rate)
            for event in traffic.events(pairs, due - sent, traffic.now_utc(), rate=1e9, model="bench-unpriced", seed=sent):
                await producer.send(topic, value=encode_event(event), key=event.key.encode())
            sent = max(sent, due)
            await asyncio.sleep(0.05)
        await producer.flush()
    finally:
        await producer.stop()
    return sent


def latency(bootstrap: str, pairs, partitions: int, window_s: float = 10.0, seconds: float = 70.0, rate: float = 200.0) -> dict[str, Any]:
    """Produce-to-stored-alert latency under a steady rate: every window of an unpriced model alerts."""
    from controlplane.replay import ensure_topics

    prefix = f"bench-{uuid.uuid4().hex[:8]}"
    asyncio.run(ensure_topics(bootstrap, {f"{prefix}.events": partitions}))
    directory = stream.temp_dir()
    url = stream.fresh_sqlite(directory)
    env = stream.worker_env(bootstrap, url, prefix, window_seconds=str(window_s), window_grace_seconds="1",
                            window_idle_close_seconds="5", batch_timeout_seconds="0.2")
    import subprocess
    import sys

    with (directory / "worker.log").open("wb") as log_file:
        worker = subprocess.Popen([sys.executable, "-m", "controlplane", "worker", "--loglevel", "warning"],
                                  env=env, stdout=log_file, stderr=subprocess.STDOUT)
    try:
        time.sleep(15)  # model loading and group join, so that the first window is not delayed by start-up
        sent = asyncio.run(_steady(bootstrap, f"{prefix}.events", pairs, rate, seconds))
        time.sleep(window_s + 8)
    finally:
        worker.terminate()
        worker.wait(timeout=60)
    samples = stream.alert_latencies(url)
    # The first and last windows are partial (production starts and stops inside them).
    trimmed = samples[len(traffic.APPS):-len(traffic.APPS)] if len(samples) > 2 * len(traffic.APPS) else samples
    quantiles = statistics.quantiles(trimmed, n=100) if len(trimmed) >= 2 else trimmed * 100
    return {
        "window_s": window_s,
        "latency_events": sent,
        "alert_latency_samples": len(trimmed),
        "alert_latency_p50_s": round(statistics.median(trimmed), 2) if trimmed else None,
        "alert_latency_p99_s": round(quantiles[98], 2) if trimmed else None,
    }


def print_table(report: dict[str, Any]) -> None:
    """Print the figures a person compares first."""
    rows = [
        ("ceiling_eps", report.get("ceiling_eps")),
        ("pipeline_eps", report.get("pipeline_eps")),
        ("pipeline_ratio", report.get("pipeline_ratio")),
        ("window_s", report.get("window_s")),
        ("alert_latency_p50_s", report.get("alert_latency_p50_s")),
        ("alert_latency_p99_s", report.get("alert_latency_p99_s")),
    ]
    for key, value in (report.get("drift_s") or {}).items():
        rows.append((f"drift_s[{key}]", value))
    rss = report.get("worker_rss_mb")
    if rss:
        rows.append((f"worker_rss_mb over {rss['events']} events", f"peak {rss['peak']}, final {rss['final']}"))
    for key, value in (report.get("dashboard_page_s") or {}).items():
        rows.append((f"dashboard_page_s[{key}]", value))
    width = max(len(name) for name, _ in rows)
    for name, value in rows:
        print(f"{name:<{width}}  {'-' if value is None else value}")


if __name__ == "__main__":
    main()
