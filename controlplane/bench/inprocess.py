"""The worker's per-batch work in one process, without Kafka: decode, score and store.

    python -m controlplane.bench.inprocess [--events N] [--batch N] [--embeddings] [--profile FILE]

It feeds `Pipeline.prepare` and `Pipeline.store` the encoded benchmark events in batches, as the
worker does, on a fresh SQLite store. It prints events per second of wall-clock and of CPU time,
and the seconds of each step. With `--profile FILE` it writes a cProfile of the run to FILE, for
`python -m pstats FILE`.
"""

from __future__ import annotations

import argparse
import cProfile
import os
import time
from pathlib import Path

from controlplane.bench import stream, traffic
from controlplane.pipeline import Pipeline, RawMessage
from controlplane.settings import Settings
from controlplane.store.engine import make_engine


def messages(pairs: list[tuple[str, str]], count: int) -> list[RawMessage]:
    """Encode `count` benchmark events as consumed messages, spread over four partitions."""
    encoded = traffic.encoded(traffic.events(pairs, count, traffic.now_utc(), rate=1000.0))
    return [RawMessage(index % 4, index // 4, value, key) for index, (key, value) in enumerate(encoded)]


def run(pipeline: Pipeline, batches: list[list[RawMessage]]) -> dict[str, float]:
    """Prepare and store every batch; return the wall-clock and CPU seconds of each step."""
    seconds = dict.fromkeys(("prepare_s", "store_s", "prepare_cpu_s", "store_cpu_s"), 0.0)
    for batch in batches:
        began, cpu_began = time.perf_counter(), time.process_time()
        records, _ = pipeline.prepare(batch)
        prepared, cpu_prepared = time.perf_counter(), time.process_time()
        pipeline.store(records)
        seconds["prepare_s"] += prepared - began
        seconds["prepare_cpu_s"] += cpu_prepared - cpu_began
        seconds["store_s"] += time.perf_counter() - prepared
        seconds["store_cpu_s"] += time.process_time() - cpu_prepared
    return seconds


def main() -> None:
    """Parse arguments, run the batches and print the rates."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--events", type=int, default=5000, help="events to process (default 5,000)")
    parser.add_argument("--batch", type=int, default=500, help="events per batch, as CONTROLPLANE_BATCH_SIZE (default 500)")
    parser.add_argument("--embeddings", action="store_true", help="run the embedding-based safety detectors too")
    parser.add_argument("--profile", type=Path, help="write a cProfile of the batches to this file")
    args = parser.parse_args()

    datasets = Path(os.environ.get("CONTROLPLANE_DATASETS", "../shared/datasets"))
    pairs = traffic.load_pairs(datasets)
    consumed = messages(pairs, args.events)
    batches = [consumed[begin : begin + args.batch] for begin in range(0, len(consumed), args.batch)]
    url = stream.fresh_sqlite(stream.temp_dir())
    settings = Settings(database_url=url, safety_embeddings=args.embeddings, _env_file=None)
    pipeline = Pipeline(make_engine(url), settings, "bench.events")
    pipeline.prepare(batches[0])  # first-call imports and model and metadata loads stay out of the figures

    profiler = cProfile.Profile() if args.profile else None
    if profiler:
        profiler.enable()
    seconds = run(pipeline, batches)
    if profiler:
        profiler.disable()
        profiler.dump_stats(args.profile)
    total = seconds["prepare_s"] + seconds["store_s"]
    cpu = seconds["prepare_cpu_s"] + seconds["store_cpu_s"]
    print(
        f"{args.events} events, batches of {args.batch}, embeddings {'on' if args.embeddings else 'off'}: "
        f"{args.events / total:.0f} events/s, {args.events / cpu:.0f} per CPU second "
        f"(prepare {seconds['prepare_s']:.2f} s wall, {seconds['prepare_cpu_s']:.2f} s CPU; "
        f"store {seconds['store_s']:.2f} s wall, {seconds['store_cpu_s']:.2f} s CPU)"
    )


if __name__ == "__main__":
    main()
