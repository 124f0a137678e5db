"""The combined per-event safety scorer."""

import json

import pytest

from controlplane.detectors.safety import SafetyResult, SafetyScorer, Span


@pytest.fixture(scope="module")
def scorer():
    return SafetyScorer()


def test_email_in_prompt(scorer):
    prompt = "My address is jane@example.com, summarize my inbox."

    [result] = scorer.score([(prompt, "Here is a summary of your inbox.")])

    assert result.spans == (Span("pii", "prompt", 14, 30, "EMAIL_ADDRESS", 1.0),)
    assert result.pii_count == 1
    assert result.has_pii
    assert result.flagged
    assert not result.toxic
    assert result.toxicity < 0.5


def test_offensive_completion(scorer):
    completion = "No, you are an idiot."

    [result] = scorer.score([("Can you help me?", completion)])

    [span] = result.spans
    assert (span.detector, span.field, span.start, span.end, span.label) == (
        "toxicity",
        "completion",
        0,
        len(completion),
        "offensive",
    )
    assert span.score >= 0.5
    assert result.toxicity == span.score
    assert result.toxic
    assert not result.has_pii
    assert result.pii_count == 0


def test_clean_pair(scorer):
    [result] = scorer.score([("Sort a list in Python.", "Use sorted(items).")])

    assert result.spans == ()
    assert not result.flagged
    assert result.to_json() == []


def test_missing_completion(scorer):
    [result] = scorer.score([("Sort a list in Python.", None)])

    assert result.spans == ()
    assert result.toxicity < 0.5


def test_empty_pair(scorer):
    [result] = scorer.score([("", "")])

    assert result == SafetyResult(spans=(), toxicity=0.0, pii_count=0)


def test_pii_offsets_in_original_completion(scorer):
    completion = "Reach me at j\u200bo@exa\u200bmple.com or 415-555-0132."

    [result] = scorer.score([("Who are you?", completion)])

    found = [(span.label, completion[span.start : span.end]) for span in result.spans]
    assert found == [("EMAIL_ADDRESS", "j\u200bo@exa\u200bmple.com"), ("PHONE_NUMBER", "415-555-0132")]
    assert result.pii_count == 2


def test_evasion_in_prompt_flagged(scorer):
    [result] = scorer.score([("you are an 1d10t", "I am sorry you feel that way.")])

    assert [(span.detector, span.field) for span in result.spans] == [("toxicity", "prompt")]


def test_batch_order_and_length(scorer):
    pairs = [
        ("Sort a list.", "sorted(x)"),
        ("Card 4111 1111 1111 1111", None),
        ("Hi", "this is shit"),
    ]

    results = scorer.score(pairs)

    assert [result.flagged for result in results] == [False, True, True]
    assert [result.has_pii for result in results] == [False, True, False]
    assert [result.toxic for result in results] == [False, False, True]


def test_to_json_round_trips(scorer):
    [result] = scorer.score([("mail jane@example.com", "you are an idiot")])

    decoded = json.loads(json.dumps(result.to_json()))

    assert [item["detector"] for item in decoded] == ["pii", "toxicity"]
    assert decoded[0] == {
        "detector": "pii",
        "field": "prompt",
        "start": 5,
        "end": 21,
        "label": "EMAIL_ADDRESS",
        "score": 1.0,
    }


def test_threshold_sets_toxic():
    strict = SafetyScorer(toxicity_threshold=0.999999)

    # The model gives this sentence about 0.95.
    [result] = strict.score([("I will kill you", None)])

    assert 0.5 < result.toxicity < 0.999999
    assert not result.toxic
    assert not result.flagged


def test_empty_batch(scorer):
    assert scorer.score([]) == []


@pytest.mark.parametrize("threshold", [0.0, 1.0, 1.5])
def test_invalid_threshold(threshold):
    with pytest.raises(ValueError, match="toxicity_threshold"):
        SafetyScorer(toxicity_threshold=threshold)
