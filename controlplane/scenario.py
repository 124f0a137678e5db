"""The demo scenario: a baseline of one kind of traffic, then a shift to other traffic into the same app and model.

The packaged demo plays code-assistant requests (codealpaca.jsonl), then role-play requests
(gpteacher_roleplay.jsonl) mixed with red-team dialogues (hh_rlhf_harmless_test.jsonl, with the
more harmful `rejected` completions). Every event carries metadata["scenario_segment"], "baseline"
or "shift", so checks can tell the two phases apart.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from controlplane.errors import ConfigurationError
from controlplane.replay import FieldMapping, Segment, Source, load_mapping

DEMO_APP = "assistant"
DEMO_MODEL = "demo-code-model"
DEMO_ROUTE = "/v1/chat/completions"
BASELINE_FILE = "codealpaca.jsonl"
ROLEPLAY_FILE = "gpteacher_roleplay.jsonl"
RED_TEAM_FILE = "hh_rlhf_harmless_test.jsonl"
ROLEPLAY_SHARE = 0.6
RED_TEAM_SHARE = 0.4
INSTRUCTION_MAPPING = "prompt=instruction+input,completion=output"
RED_TEAM_MAPPING = "extractor=hh-rlhf,dialogue=rejected"


@dataclass(frozen=True)
class ScenarioSource:
    """One file of a scenario phase: its field mapping (app, model and route are set by the scenario) and weight."""

    path: Path
    mapping: str | FieldMapping = INSTRUCTION_MAPPING
    weight: float = 1.0


def demo_scenario(
    datasets_dir: Path,
    windows_baseline: int,
    windows_shift: int,
    events_per_window: int,
    window_seconds: float,
    start: datetime,
    seed: int = 7,
) -> list[Segment]:
    """Build the demo from the public datasets: code requests, then 60% role-play and 40% red-team dialogues."""
    datasets_dir = Path(datasets_dir)
    if not datasets_dir.is_dir():
        raise ConfigurationError(
            f"datasets directory {datasets_dir} not found. It must contain {BASELINE_FILE}, {ROLEPLAY_FILE} and {RED_TEAM_FILE}"
        )
    return shift_scenario(
        baseline=[ScenarioSource(datasets_dir / BASELINE_FILE)],
        shift=[
            ScenarioSource(datasets_dir / ROLEPLAY_FILE, weight=ROLEPLAY_SHARE),
            ScenarioSource(datasets_dir / RED_TEAM_FILE, RED_TEAM_MAPPING, RED_TEAM_SHARE),
        ],
        windows_baseline=windows_baseline,
        windows_shift=windows_shift,
        events_per_window=events_per_window,
        window_seconds=window_seconds,
        start=start,
        seed=seed,
    )


def shift_scenario(
    baseline: Sequence[ScenarioSource],
    shift: Sequence[ScenarioSource],
    *,
    windows_baseline: int,
    windows_shift: int,
    events_per_window: int,
    window_seconds: float,
    start: datetime,
    seed: int = 7,
    app: str = DEMO_APP,
    model: str = DEMO_MODEL,
    route: str = DEMO_ROUTE,
    synthesize: bool = True,
) -> list[Segment]:
    """Build a baseline segment and a shift segment from the files a user names, all into one app and model.

    Each window of `window_seconds` event time contains `events_per_window` events, so windows line up
    with the worker's tumbling windows when `start` is a multiple of `window_seconds`. With
    `synthesize`, usage and latency are estimated and listed in metadata["synthetic"].
    """
    _check_positive(windows_baseline=windows_baseline, windows_shift=windows_shift, events_per_window=events_per_window)
    if window_seconds <= 0:
        raise ConfigurationError(f"window_seconds must be greater than 0, not {window_seconds}")
    rate = events_per_window / window_seconds
    overrides = {"app": app, "model": model, "route": route, "synthesize_usage": synthesize, "synthesize_latency": synthesize}
    phases = [("baseline", baseline, windows_baseline), ("shift", shift, windows_shift)]
    segments = []
    for name, files, windows in phases:
        if not files:
            raise ConfigurationError(f"the {name} phase of the scenario names no file")
        sources = tuple(_source(item, overrides) for item in files)
        segments.append(
            Segment(
                name=name, sources=sources, rows=windows * events_per_window, rate=rate,
                start=start if name == "baseline" else None, seed=seed, metadata={"scenario_segment": name},
            )
        )
    return segments


def _source(item: ScenarioSource, overrides: dict[str, object]) -> Source:
    mapping = load_mapping(item.mapping).model_copy(update=overrides)
    return Source(Path(item.path), mapping, item.weight)


def _check_positive(**values: int) -> None:
    for name, value in values.items():
        if value < 1:
            raise ConfigurationError(f"{name} must be at least 1, not {value}")
