"""The detector evaluation on a small sample of the public datasets."""

import json

import pytest

from controlplane.errors import ConfigurationError
from controlplane.eval import evaluate, format_table, main
from controlplane.eval_data import RedTeamDialogue, _split_dialogue, datasets_dir, read_red_team, sample

SAMPLE = 24


@pytest.fixture(scope="module")
def report(datasets_dir):
    return evaluate(datasets_dir, size=SAMPLE, false_positive_pairs=SAMPLE)


def _assert_rate(rate: dict, total: int) -> None:
    assert set(rate) == {"count", "total", "rate"}
    assert rate["total"] == total
    assert 0 <= rate["count"] <= total
    assert 0.0 <= rate["rate"] <= 1.0


def test_report_sections(report):
    assert set(report) == {
        "generated_at",
        "package_version",
        "datasets_dir",
        "sample_size",
        "embeddings",
        "offensive_language",
        "red_team",
        "jailbreak",
        "refusal",
        "false_positives",
        "elapsed_seconds",
    }
    assert report["sample_size"] == SAMPLE
    assert report["embeddings"] is True


def test_offensive_language_metrics(report):
    offensive = report["offensive_language"]

    assert offensive["rows"] == SAMPLE
    assert offensive["threshold"] == 0.5
    for name in ("precision", "recall", "f1"):
        assert 0.0 <= offensive[name] <= 1.0
    assert offensive["true_positives"] + offensive["false_negatives"] == offensive["toxic_rows"]


def test_red_team_rates(report):
    red_team = report["red_team"]

    assert red_team["dialogues"] == SAMPLE
    for name in ("toxic_rejected", "toxic_chosen"):
        _assert_rate(red_team[name], SAMPLE)
    # The headline rates count only the held-out, odd-numbered comparisons of the sample.
    assert red_team["rejected"]["total"] == red_team["chosen"]["total"] < SAMPLE
    assert red_team["ratio"] is None or red_team["ratio"] >= 0.0


def test_jailbreak_and_refusal_rates(report):
    _assert_rate(report["jailbreak"]["hh_rlhf_human_turns"], SAMPLE)
    _assert_rate(report["jailbreak"]["benign"]["codealpaca_prompts"], SAMPLE)
    _assert_rate(report["jailbreak"]["benign"]["alpaca_seed_prompts"], SAMPLE)
    for name in ("chosen", "rejected", "attack_succeeded_chosen", "attack_succeeded_rejected"):
        _assert_rate(report["refusal"][name], SAMPLE)


def test_false_positive_rates(report):
    false_positives = report["false_positives"]

    assert false_positives["pairs"] == SAMPLE
    for name in ("pii", "toxicity", "jailbreak", "refusal", "any_span"):
        _assert_rate(false_positives[name], SAMPLE)
    assert false_positives["any_span"]["count"] >= false_positives["toxicity"]["count"]


def test_table_lists_headline_figures(report):
    table = format_table(report)

    assert "F1" in table
    assert "ratio rejected/chosen" in table
    assert len(table.splitlines()) == 17


def test_main_writes_report(datasets_dir, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("CONTROLPLANE_DATASETS", str(datasets_dir))
    output = tmp_path / "results" / "eval.json"

    status = main(["--sample", "6", "--output", str(output), "--no-embeddings"])

    assert status == 0
    written = json.loads(output.read_text())
    assert written["embeddings"] is False
    assert written["offensive_language"]["rows"] == 6
    assert "report written to" in capsys.readouterr().out


def test_missing_datasets_folder(tmp_path, monkeypatch, capsys):
    missing = tmp_path / "nowhere"
    monkeypatch.setenv("CONTROLPLANE_DATASETS", str(missing))

    with pytest.raises(ConfigurationError, match="datasets folder not found"):
        datasets_dir()
    assert main(["--sample", "2"]) == 2
    assert str(missing) in capsys.readouterr().err


DIALOGUE_CASES = [
    # (case, dialogue, expected human turns, expected final assistant turn)
    (
        "two rounds",
        "\n\nHuman: hi\n\nAssistant: hello\n\nHuman: tell me a joke\n\nAssistant: Why did the owl stay in?",
        ["hi", "tell me a joke"],
        "Why did the owl stay in?",
    ),
    ("ends with a human turn", "\n\nHuman: hi\n\nAssistant: hello\n\nHuman: bye", ["hi", "bye"], None),
    ("no markers", "just text", [], None),
]


@pytest.mark.parametrize(("case", "dialogue", "humans", "final"), DIALOGUE_CASES, ids=[case[0] for case in DIALOGUE_CASES])
def test_split_dialogue(case, dialogue, humans, final):
    assert _split_dialogue(dialogue) == (humans, final)


def test_red_team_prompt_joins_human_turns():
    dialogue = RedTeamDialogue(("first", "second"), chosen="a", rejected="b")

    assert dialogue.prompt == "first\nsecond"


def test_read_red_team_sample(datasets_dir):
    dialogues = read_red_team(datasets_dir, 5)

    assert len(dialogues) == 5
    assert all(dialogue.human_turns and dialogue.chosen is not None for dialogue in dialogues)


def test_sample_is_deterministic_and_ordered():
    rows = list(range(100))

    first = sample(rows, 10)

    assert first == sample(rows, 10)
    assert first == sorted(first)
    assert sample(rows, None) == rows
    assert sample(rows, 500) == rows
