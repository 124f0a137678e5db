"""Run the benchmarks, print a table and write results/bench.json.

    python -m controlplane.bench [--events N] [--embedding-events N] [--rss-events N] [--skip PART ...]

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
import uuid
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from controlplane.bench import stream, traffic
from controlplane.settings import get_settings

log = logging.getLogger("controlplane.bench")
RESULTS = Path("results")


def main() -> None:
    """Parse arguments, run each part and write the report."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--events", type=int, default=200_000,
                        help="events of the throughput topic, all read by the run without embeddings (default 200,000)")
    parser.add_argument("--embedding-events", type=int, default=5_000,
                        help="events read by the run with every detector on, embeddings included (default 5,000)")
    parser.add_argument("--rss-events", type=int, default=1_000_000, help="events of the memory run (default 1,000,000)")
    parser.add_argument("--rss-timeout", type=float, default=3600.0,
                        help="seconds the memory run may take before it fails (default 3,600)")
    parser.add_argument("--partitions", type=int, default=4, help="partitions of the benchmark topics")
    parser.add_argument("--latency-windows", type=int, default=4, help="windows measured by the latency part (default 4)")
    parser.add_argument("--latency-window-s", type=float, default=30.0, help="window length of the latency part (default 30 s)")
    parser.add_argument("--skip", nargs="*", default=[], choices=["throughput", "latency", "drift", "memory", "dashboard"])
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")

    datasets = Path(os.environ.get("CONTROLPLANE_DATASETS", "../shared/datasets"))
    bootstrap = get_settings().kafka_bootstrap
    pairs = traffic.load_pairs(datasets)
    report: dict[str, Any] = {
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version(), "platform": platform.platform(),
                    "load_average_at_start": list(os.getloadavg())},
        "started_at": datetime.now(timezone.utc).isoformat(),
    }
    if "throughput" not in args.skip:
        report.update(throughput(bootstrap, pairs, args.events, args.embedding_events, args.partitions))
    if "latency" not in args.skip:
        report.update(latency(bootstrap, pairs, args.partitions, args.latency_windows, args.latency_window_s))
    if "drift" not in args.skip:
        from controlplane.bench.drift import drift_timings

        report["drift_s"] = drift_timings(pairs)
    if "memory" not in args.skip:
        report.update(memory(bootstrap, pairs, args.rss_events, args.partitions, args.rss_timeout))
    if "dashboard" not in args.skip:
        try:
            from controlplane.bench.dashboard import dashboard_timings
        except ImportError as exc:
            log.warning("dashboard timing skipped: %s", exc)
        else:
            report["dashboard_page_s"] = dashboard_timings()
    report["finished_at"] = datetime.now(timezone.utc).isoformat()
    report["machine"]["load_average_at_end"] = list(os.getloadavg())

    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "bench.json").write_text(json.dumps(report, indent=2) + "\n")
    print_table(report)


def _produce(bootstrap: str, prefix: str, pairs, count: int, partitions: int) -> float:
    stream_ = traffic.encoded(traffic.events(pairs, count, traffic.now_utc(), rate=1000.0))
    produced, seconds = asyncio.run(traffic.produce_encoded(bootstrap, f"{prefix}.events", partitions, stream_))
    log.info("produced %d events in %.1fs (%.0f/s)", produced, seconds, produced / seconds)
    return seconds


def _pipeline_run(bootstrap: str, prefix: str, count: int, embeddings: bool, timeout_s: float) -> stream.WorkerRun:
    # Both runs read the same topic from its start, each in its own consumer group and store.
    directory = stream.temp_dir()
    group = f"{prefix}-{'embeddings' if embeddings else 'no-embeddings'}"
    env = stream.worker_env(bootstrap, stream.fresh_sqlite(directory), prefix, window_seconds="60",
                            consumer_group=group, safety_embeddings="true" if embeddings else "false")
    run = stream.run_worker(env, count, directory / "worker.log", timeout_s=timeout_s)
    log.info("pipeline with embeddings %s: %d events at %.0f/s", "on" if embeddings else "off", count, run.eps)
    return run


def throughput(bootstrap: str, pairs, count: int, embedding_count: int, partitions: int) -> dict[str, Any]:
    """Ceiling and pipeline events per second, with every detector on and without the embeddings."""
    prefix = f"bench-{uuid.uuid4().hex[:8]}"
    _produce(bootstrap, prefix, pairs, count, partitions)
    ceiling = stream.ceiling_eps(bootstrap, f"{prefix}.events", count)
    without = _pipeline_run(bootstrap, prefix, count, embeddings=False, timeout_s=3600)
    with_all = _pipeline_run(bootstrap, prefix, min(embedding_count, count), embeddings=True, timeout_s=3600)
    return {
        "events": count,
        "ceiling_eps": round(ceiling),
        "pipeline_events": with_all.events,
        "pipeline_eps": round(with_all.eps),
        "pipeline_ratio": round(with_all.eps / ceiling, 5),
        "pipeline_events_no_embeddings": without.events,
        "pipeline_eps_no_embeddings": round(without.eps),
        "pipeline_ratio_no_embeddings": round(without.eps / ceiling, 5),
    }


def memory(bootstrap: str, pairs, count: int, partitions: int, timeout_s: float) -> dict[str, Any]:
    """Peak and final worker RSS over a run of `count` events without embeddings, and whether it stays flat."""
    prefix = f"bench-{uuid.uuid4().hex[:8]}"
    _produce(bootstrap, prefix, pairs, count, partitions)
    directory = stream.temp_dir()
    env = stream.worker_env(bootstrap, stream.fresh_sqlite(directory), prefix, window_seconds="60",
                            safety_embeddings="false")
    run = stream.run_worker(env, count, directory / "worker.log", timeout_s=timeout_s)
    step = max(1, len(run.rss_samples) // 20)
    return {
        "worker_rss_mb": {
            "events": count,
            "safety_embeddings": False,
            "seconds": round(run.seconds, 1),
            "eps": round(run.eps),
            "peak": round(run.rss_peak_mb, 1),
            "final": round(run.rss_final_mb, 1),
            **rss_quarters(run.rss_samples, run.first_stored_s),
            "sample_interval_s": 1.0,
            "samples_taken": len(run.rss_samples),
            "samples": [[seconds, stored, round(rss, 1)] for seconds, stored, rss in run.rss_samples[::step]],
        }
    }


def rss_quarters(samples: list[tuple[float, int, float]], first_stored_s: float) -> dict[str, Any]:
    """Mean RSS of each quarter of the samples taken after the first stored batch, and last over first."""
    # Start-up (imports, model loads) happens before the first stored batch, so it is not read as growth.
    steady = [rss for seconds, _, rss in samples if seconds >= first_stored_s]
    size = max(1, len(steady) // 4)
    means = [round(statistics.mean(steady[index * size : (index + 1) * size] or steady[-size:]), 1) for index in range(4)]
    return {
        "first_quarter_mean": means[0],
        "last_quarter_mean": means[3],
        "quarter_means": means,
        "last_to_first_quarter": round(means[3] / means[0], 3),
    }


def latency(bootstrap: str, pairs, partitions: int, windows: int, window_s: float) -> dict[str, Any]:
    """Alert latency in windows of `window_s`, with text drift (the default) and without it."""
    from controlplane.bench import latency as latency_bench

    runs = {
        variant: latency_bench.measure(bootstrap, pairs, partitions, window_s=window_s, windows=windows, text_drift=text_drift)
        for variant, text_drift in (("default", True), ("no_text_drift", False))
    }
    default = runs["default"]
    return {
        "window_s": default["window_s"],
        "alert_latency_p50_s": default["p50_s"],
        "alert_latency_p99_s": default["p99_s"],
        "alert_latency_no_text_drift_p50_s": runs["no_text_drift"]["p50_s"],
        "alert_latency_no_text_drift_p99_s": runs["no_text_drift"]["p99_s"],
        "alert_latency_runs": runs,
    }


def print_table(report: dict[str, Any]) -> None:
    """Print the figures a person compares first."""
    rows: list[tuple[str, Any]] = [
        (key, report.get(key))
        for key in ("ceiling_eps", "pipeline_eps", "pipeline_ratio", "pipeline_eps_no_embeddings",
                    "pipeline_ratio_no_embeddings", "window_s", "alert_latency_p50_s", "alert_latency_p99_s",
                    "alert_latency_no_text_drift_p50_s", "alert_latency_no_text_drift_p99_s")
    ]
    for size, value in (report.get("drift_s") or {}).items():
        if isinstance(value, dict):
            rows.append((
                f"drift_s[{size} rows]",
                f"without text {value['without_text']}, with text {value['with_text']} "
                f"(all at close {value['with_text_all_at_close']}; ingest embedding {value['ingest_embedding_s']})",
            ))
    rss = report.get("worker_rss_mb")
    if rss:
        rows.append((f"worker_rss_mb over {rss['events']} events", f"peak {rss['peak']}, final {rss['final']}"))
        rows.append(("worker_rss_mb quarter means", f"first {rss['first_quarter_mean']}, last {rss['last_quarter_mean']}"))
    for size, value in (report.get("dashboard_page_s") or {}).items():
        rows.append((f"dashboard_page_s[{size} events]", f"slowest {value['slowest']}"))
    width = max(len(name) for name, _ in rows)
    for name, value in rows:
        print(f"{name:<{width}}  {'-' if value is None else value}")


if __name__ == "__main__":
    main()
