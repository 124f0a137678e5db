"""Replay of files as events: mappings, readers, dialogue splitting, the timeline, ids and the demo scenario."""

from __future__ import annotations

import json
import uuid
from collections import Counter
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest

from controlplane.errors import ConfigurationError
from controlplane.replay import (
    REPLAY_NAMESPACE,
    FieldMapping,
    Segment,
    Source,
    SourceRowError,
    Timeline,
    build_segments_from_cli,
    load_mapping,
    parse_speedup,
    read_rows,
    split_dialogue,
)
from controlplane.scenario import ScenarioSource, demo_scenario, shift_scenario

START = datetime(2026, 3, 1, 9, 0, tzinfo=timezone.utc)
BASE_MAPPING = "prompt=instruction+input,completion=output,app=assistant,model=demo-code-model"

# A dialogue written for these tests, in the hh-rlhf layout.
DIALOGUE = (
    "\n\nHuman: How do I reverse a list in Python?"
    "\n\nAssistant: Use slicing: items[::-1]."
    "\n\nHuman: And in place?"
    "\n\nAssistant: Call items.reverse()."
)


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")
    return path


def instruction_rows(count: int) -> list[dict]:
    return [{"instruction": f"Explain step {i} of the build.", "input": "", "output": f"Step {i} compiles the code."} for i in range(count)]


def play(tmp_path: Path, mapping: str, rows: list[dict], **segment: object) -> list:
    source = Source(write_jsonl(tmp_path / "rows.jsonl", rows), load_mapping(mapping))
    return list(Timeline([Segment(name="only", sources=(source,), start=START, **segment)]))


@pytest.mark.parametrize(
    ("spec", "expected"),
    [
        (BASE_MAPPING, {"prompt": ("instruction", "input"), "completion": "output", "app": "assistant", "model": "demo-code-model"}),
        ("extractor=hh-rlhf,dialogue=chosen,app=a,model=m", {"extractor": "hh-rlhf", "dialogue": "chosen"}),
        ("prompt=text,completion=,app=a,model=m,synthesize_usage", {"prompt": ("text",), "completion": None, "synthesize_usage": True}),
        ("prompt=q, app=@service ,model=m,timestamp=ts,synthesize_latency=false", {"app": "@service", "timestamp": "ts", "synthesize_latency": False}),
        ("app=a,model=m,route=/v1/chat/completions,model_version=2026-01", {"route": "/v1/chat/completions", "model_version": "2026-01"}),
    ],
)
def test_mapping_parse(spec: str, expected: dict) -> None:
    mapping = FieldMapping.parse(spec)
    for name, value in expected.items():
        assert getattr(mapping, name) == value, name


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("promt=instruction,app=a,model=m", "promt"),
        ("extractor=xml,app=a,model=m", "extractor"),
        ("prompt=,app=a,model=m", "at least one prompt field"),
    ],
)
def test_mapping_parse_rejects_invalid(spec: str, message: str) -> None:
    with pytest.raises(ConfigurationError, match=message):
        FieldMapping.parse(spec)


def test_mapping_loads_from_yaml_and_dict(tmp_path: Path) -> None:
    path = tmp_path / "mapping.yaml"
    path.write_text("prompt: [question, context]\ncompletion: answer\napp: support\nmodel: m1\n", encoding="utf-8")
    from_yaml = load_mapping(path)
    from_dict = load_mapping({"prompt": "question+context", "completion": "answer", "app": "support", "model": "m1"})
    assert from_yaml == from_dict
    assert from_yaml.prompt == ("question", "context")


def test_source_without_app_names_the_fix(tmp_path: Path) -> None:
    path = write_jsonl(tmp_path / "rows.jsonl", instruction_rows(1))
    with pytest.raises(ConfigurationError, match="Add app=NAME"):
        Source(path, FieldMapping.parse("model=m"))


@pytest.mark.parametrize(
    ("row", "prompt"),
    [
        ({"instruction": "Sort the list.", "input": "[3, 1, 2]"}, "Sort the list.\n\n[3, 1, 2]"),
        ({"instruction": "Sort the list.", "input": ""}, "Sort the list."),
        ({"instruction": "Sort the list.", "input": "  \n"}, "Sort the list."),
        ({"instruction": "Sort the list.", "input": None}, "Sort the list."),
        ({"instruction": "", "input": "[3, 1, 2]"}, "[3, 1, 2]"),
        ({"instruction": "Add", "input": 7}, "Add\n\n7"),
    ],
)
def test_prompt_joins_fields_skipping_empty(tmp_path: Path, row: dict, prompt: str) -> None:
    (event,) = play(tmp_path, BASE_MAPPING, [{**row, "output": "done"}])
    assert event.prompt == prompt
    assert event.completion == "done"


@pytest.mark.parametrize(
    ("text", "roles", "completion"),
    [
        (DIALOGUE, ["user", "assistant", "user"], "Call items.reverse()."),
        ("\n\nHuman: Hi there\n\nAssistant: Hello.", ["user"], "Hello."),
        ("Human: Hi there\n\nAssistant: Hello.", ["user"], "Hello."),
        ("\n\nHuman: Hi there\n\nAssistant:", ["user"], ""),
    ],
)
def test_split_dialogue(text: str, roles: list[str], completion: str) -> None:
    messages, final = split_dialogue(text)
    assert [message.role for message in messages] == roles
    assert final == completion
    assert messages[0].content == ("How do I reverse a list in Python?" if len(roles) > 1 else "Hi there")


@pytest.mark.parametrize(
    "text",
    [
        "Preamble\n\nHuman: Hi\n\nAssistant: Hello.",
        "\n\nHuman: Hi\n\nAssistant: Hello.\n\nHuman: Bye",
        "\n\nAssistant: Hello.",
        "no turns at all",
    ],
)
def test_split_dialogue_rejects_malformed(text: str) -> None:
    with pytest.raises(ValueError):
        split_dialogue(text)


def test_hh_rlhf_extractor_selects_field(tmp_path: Path) -> None:
    rows = [{"chosen": DIALOGUE, "rejected": DIALOGUE.replace("Call items.reverse().", "I will not say.")}]
    for field, completion in [("chosen", "Call items.reverse()."), ("rejected", "I will not say.")]:
        (event,) = play(tmp_path, f"extractor=hh-rlhf,dialogue={field},app=a,model=m", rows)
        assert event.prompt is None
        assert event.completion == completion
        assert [message.content for message in event.messages] == [
            "How do I reverse a list in Python?", "Use slicing: items[::-1].", "And in place?"
        ]
        assert event.user_prompt_text() == "And in place?"


@pytest.mark.parametrize("bom", [b"", b"\xef\xbb\xbf"])
def test_csv_reads_with_and_without_bom(tmp_path: Path, bom: bytes) -> None:
    path = tmp_path / "comments.csv"
    path.write_bytes(bom + 'text,label\r\n"first line\nsecond line",a\r\nplain,b\r\n\r\nlast,c\r\n'.encode())
    rows = list(read_rows(path))
    assert [row.data for row in rows] == [
        {"text": "first line\nsecond line", "label": "a"}, {"text": "plain", "label": "b"}, {"text": "last", "label": "c"}
    ]
    assert [row.line for row in rows] == [2, 4, 6]
    assert [row.index for row in rows] == [0, 1, 2]


def test_bad_rows_raise_with_file_and_line(tmp_path: Path) -> None:
    path = tmp_path / "rows.jsonl"
    path.write_text(json.dumps(instruction_rows(1)[0]) + "\n\n{not json\n", encoding="utf-8")
    source = Source(path, FieldMapping.parse(BASE_MAPPING))
    with pytest.raises(SourceRowError, match=r"rows\.jsonl, line 3: not a JSON object") as caught:
        list(Timeline([Segment(name="only", sources=(source,), start=START)]))
    assert caught.value.line == 3


@pytest.mark.parametrize(
    ("row", "reason"),
    [
        ({"instruction": "", "input": "", "output": "x"}, "no prompt text"),
        ({"instruction": "Hi", "input": "", "outptu": "x"}, "field 'output' not found"),
        ({"instruction": ["a"], "input": "", "output": "x"}, "is a list"),
    ],
)
def test_skip_bad_counts_rows(tmp_path: Path, row: dict, reason: str) -> None:
    rows = instruction_rows(2) + [row]
    with pytest.raises(SourceRowError, match=reason):
        play(tmp_path, BASE_MAPPING, rows)
    source = Source(tmp_path / "rows.jsonl", FieldMapping.parse(BASE_MAPPING))
    timeline = Timeline([Segment(name="only", sources=(source,), start=START, skip_bad=True)])
    assert len(list(timeline)) == 2
    assert timeline.skipped == {"only": 1}


@pytest.mark.parametrize(("rate", "step"), [(1.0, 1.0), (4.0, 0.25), (0.5, 2.0)])
def test_timeline_spaces_events_at_rate(tmp_path: Path, rate: float, step: float) -> None:
    source = Source(write_jsonl(tmp_path / "rows.jsonl", instruction_rows(3)), FieldMapping.parse(BASE_MAPPING))
    first = Segment(name="first", sources=(source,), rate=rate, start=START)
    second = Segment(name="second", sources=(source,), rate=rate)
    events = list(Timeline([first, second]))
    assert [event.timestamp for event in events] == [START + timedelta(seconds=i * step) for i in range(6)]
    assert [event.metadata["replay_segment"] for event in events] == ["first"] * 3 + ["second"] * 3


def test_timeline_takes_explicit_segment_start(tmp_path: Path) -> None:
    source = Source(write_jsonl(tmp_path / "rows.jsonl", instruction_rows(2)), FieldMapping.parse(BASE_MAPPING))
    later = START + timedelta(hours=1)
    segments = [Segment(name="a", sources=(source,), start=START), Segment(name="b", sources=(source,), start=later)]
    events = list(Timeline(segments))
    assert [event.timestamp for event in events] == [START, START + timedelta(seconds=1), later, later + timedelta(seconds=1)]


@pytest.mark.parametrize(
    ("value", "expected"),
    [("2026-03-01T09:00:05Z", START + timedelta(seconds=5)), ("2026-03-01T10:00:05+01:00", START + timedelta(seconds=5)),
     (START.timestamp() + 7, START + timedelta(seconds=7))],
)
def test_timestamp_field_is_used(tmp_path: Path, value: object, expected: datetime) -> None:
    rows = [{"q": "What time is it?", "ts": value}]
    (event,) = play(tmp_path, "prompt=q,completion=,timestamp=ts,app=a,model=m", rows)
    assert event.timestamp == expected


def test_event_ids_are_deterministic(tmp_path: Path) -> None:
    source = Source(write_jsonl(tmp_path / "rows.jsonl", instruction_rows(5)), FieldMapping.parse(BASE_MAPPING))
    segments = [Segment(name="a", sources=(source,)), Segment(name="b", sources=(source,), rows=12, seed=3)]
    first = [event.event_id for event in Timeline(segments)]
    second = [event.event_id for event in Timeline(segments)]
    assert first == second
    assert first[0] == str(uuid.uuid5(REPLAY_NAMESPACE, "rows.jsonl|0|0"))
    # 12 draws from 5 rows repeat rows, and each repeat still gets its own id.
    assert len(set(first)) == 17


def test_sampling_is_seeded(tmp_path: Path) -> None:
    source = Source(write_jsonl(tmp_path / "rows.jsonl", instruction_rows(50)), FieldMapping.parse(BASE_MAPPING))

    def rows_drawn(seed: int) -> list[int]:
        return [event.metadata["replay_row"] for event in Timeline([Segment(name="s", sources=(source,), rows=10, seed=seed)])]

    assert rows_drawn(1) == rows_drawn(1)
    assert rows_drawn(1) != rows_drawn(2)
    assert len(set(rows_drawn(1))) == 10


def test_mix_follows_weights(tmp_path: Path) -> None:
    code = Source(write_jsonl(tmp_path / "code.jsonl", instruction_rows(30)), FieldMapping.parse(BASE_MAPPING), weight=0.8)
    play_rows = Source(write_jsonl(tmp_path / "play.jsonl", instruction_rows(30)), FieldMapping.parse(BASE_MAPPING), weight=0.2)
    events = list(Timeline([Segment(name="mix", sources=(code, play_rows), rows=100, start=START)]))
    assert Counter(event.metadata["replay_source"] for event in events) == {"code.jsonl": 80, "play.jsonl": 20}
    sources = [event.metadata["replay_source"] for event in events]
    assert sources[:20] != ["code.jsonl"] * 20


def test_unknown_usage_stays_none(tmp_path: Path) -> None:
    (event,) = play(tmp_path, BASE_MAPPING, instruction_rows(1))
    assert event.usage.input_tokens is None
    assert event.usage.output_tokens is None
    assert event.latency_ms is None
    assert event.cost_usd is None
    assert "synthetic" not in event.metadata


@pytest.mark.parametrize(
    ("flags", "synthetic"),
    [("synthesize_usage", ["usage"]), ("synthesize_latency", ["latency_ms"]),
     ("synthesize_usage,synthesize_latency", ["usage", "latency_ms"])],
)
def test_synthetic_fields_are_marked(tmp_path: Path, flags: str, synthetic: list[str]) -> None:
    row = {"instruction": "x" * 40, "input": "", "output": "y" * 100}
    (event,) = play(tmp_path, f"{BASE_MAPPING},{flags}", [row])
    assert event.metadata["synthetic"] == synthetic
    if "usage" in synthetic:
        assert event.usage.input_tokens == 10
        assert event.usage.output_tokens == 25
    else:
        assert event.usage.input_tokens is None
    if "latency_ms" in synthetic:
        # 300 ms base + 25 ms per output token, times log-normal noise with sigma 0.25.
        assert 925 * 0.3 < event.latency_ms < 925 * 3
        (again,) = play(tmp_path, f"{BASE_MAPPING},{flags}", [row])
        assert again.latency_ms == event.latency_ms
    else:
        assert event.latency_ms is None


@pytest.mark.parametrize(("value", "expected"), [("max", 0.0), ("MAX", 0.0), (0, 0.0), ("10", 10.0), (2.5, 2.5)])
def test_parse_speedup(value: object, expected: float) -> None:
    assert parse_speedup(value) == expected


@pytest.mark.parametrize("value", ["-1", "fast", "nan"])
def test_parse_speedup_rejects(value: str) -> None:
    with pytest.raises(ConfigurationError, match="speedup"):
        parse_speedup(value)


def test_build_segments_from_cli(tmp_path: Path) -> None:
    first = write_jsonl(tmp_path / "first.jsonl", instruction_rows(4))
    second = write_jsonl(tmp_path / "second.jsonl", instruction_rows(3))
    segments = build_segments_from_cli([first, second], BASE_MAPPING, None, 2.0, START, 1)
    events = list(Timeline(segments))
    assert [segment.name for segment in segments] == ["first.jsonl", "second.jsonl"]
    assert len(events) == 7
    assert events[-1].timestamp == START + timedelta(seconds=3.0)
    assert {event.key for event in events} == {"assistant|demo-code-model"}


def test_build_segments_from_cli_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigurationError, match="absent.jsonl not found"):
        build_segments_from_cli([tmp_path / "absent.jsonl"], BASE_MAPPING, 10, 1.0, START, 1)


def test_shift_scenario_on_user_files(tmp_path: Path) -> None:
    baseline = write_jsonl(tmp_path / "base.jsonl", instruction_rows(40))
    shifted = write_jsonl(tmp_path / "dialogues.jsonl", [{"rejected": DIALOGUE, "chosen": DIALOGUE}] * 10)
    segments = shift_scenario(
        [ScenarioSource(baseline)],
        [ScenarioSource(baseline, weight=0.5), ScenarioSource(shifted, "extractor=hh-rlhf", 0.5)],
        windows_baseline=2, windows_shift=1, events_per_window=10, window_seconds=60, start=START,
    )
    events = list(Timeline(segments))
    phases = Counter((event.metadata["scenario_segment"], event.metadata["replay_source"]) for event in events)
    assert phases == {("baseline", "base.jsonl"): 20, ("shift", "base.jsonl"): 5, ("shift", "dialogues.jsonl"): 5}
    assert {event.key for event in events} == {"assistant|demo-code-model"}
    assert {event.route for event in events} == {"/v1/chat/completions"}
    assert events[20].timestamp == START + timedelta(seconds=120)


def test_demo_scenario_on_datasets(datasets_dir: Path) -> None:
    segments = demo_scenario(datasets_dir, windows_baseline=2, windows_shift=2, events_per_window=50, window_seconds=30, start=START)
    events = list(Timeline(segments))
    phases = Counter((event.metadata["scenario_segment"], event.metadata["replay_source"]) for event in events)
    assert phases == {
        ("baseline", "codealpaca.jsonl"): 100,
        ("shift", "gpteacher_roleplay.jsonl"): 60,
        ("shift", "hh_rlhf_harmless_test.jsonl"): 40,
    }
    red_team = [event for event in events if event.metadata["replay_source"] == "hh_rlhf_harmless_test.jsonl"]
    assert all(event.messages and event.messages[-1].role == "user" for event in red_team)
    assert events[-1].timestamp == START + timedelta(seconds=119.4)
    assert [event.event_id for event in Timeline(segments)] == [event.event_id for event in events]


@pytest.mark.parametrize("missing", ["dir", "file"])
def test_demo_scenario_missing_path(tmp_path: Path, missing: str) -> None:
    datasets = tmp_path / "datasets"
    if missing == "file":
        datasets.mkdir()
        write_jsonl(datasets / "codealpaca.jsonl", instruction_rows(3))
    expected = "datasets not found" if missing == "dir" else "gpteacher_roleplay.jsonl not found"
    with pytest.raises(ConfigurationError, match=expected):
        demo_scenario(datasets, 1, 1, 10, 60.0, START)
