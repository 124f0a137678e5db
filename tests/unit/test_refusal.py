"""Refusal patterns in the opening of a completion, and embedding similarity to refusals."""

import pytest

from controlplane.detectors.embeddings import load_encoder
from controlplane.detectors.refusal import OPENING_CHARS, RefusalSimilarity, find_refusal

REFUSAL_CASES = [
    # (case, completion, expected score of the strongest match, or None for no refusal)
    ("cannot help", "I can't help with that request.", 0.95),
    ("unable to share", "I'm unable to share those records.", 0.95),
    ("really cannot", "I really can't assist you with this one.", 0.95),
    ("won't be able", "I won't be able to write that for you.", 0.95),
    ("must decline", "I must respectfully decline.", 0.95),
    ("sorry but", "Sorry, but I won't.", 0.9),
    ("as an AI", "As an AI language model, I do not have opinions on that.", 0.9),
    ("not comfortable", "I'm not comfortable writing a fake review.", 0.85),
    ("not something I can", "That's not something I can do.", 0.85),
    ("request violates", "Your request violates the rules of this service.", 0.85),
    ("have to pass", "Thanks, but I'll have to pass on that.", 0.8),
    ("soft refusal", "I don't think that's a good idea.", 0.7),
    ("curly apostrophe", "I can\u2019t help with that.", 0.95),
    ("compliance", "Sure! Here is the function you asked for.", None),
    ("apology then answer", "Sorry for the wait. The answer is 12.", None),
    ("can't help but", "I can't help but smile when I see the sea.", None),
    ("can't remember", "I can't remember the year, but the bridge opened in the 1930s.", None),
    ("empty", "", None),
]


@pytest.mark.parametrize(("case", "text", "expected"), REFUSAL_CASES, ids=[case[0] for case in REFUSAL_CASES])
def test_refusal_patterns(case, text, expected):
    match = find_refusal(text)

    assert (match.score if match else None) == expected


def test_match_offsets_in_original_text():
    text = "Well\u200b, I cannot provide that."

    match = find_refusal(text)

    assert text[match.start : match.end] == "I cannot provide"


def test_refusal_after_opening_ignored():
    text = "Here is the summary. " + "The report covers sales. " * 20 + "I can't help you with anything else."

    assert len(text) > OPENING_CHARS
    assert find_refusal(text) is None


@pytest.fixture(scope="module")
def similarity():
    return RefusalSimilarity(load_encoder())


SIMILARITY_CASES = [
    # (case, completion, refused); the refused texts match no pattern.
    ("declines politely", "Sorry, helping with that could put people in danger, so I'll stay out of it.", True),
    ("declines as unethical", "Doing that would be wrong, and I'd rather stay out of it.", True),
    ("code answer", "def add(a, b):\n    return a + b", False),
    ("recipe answer", "Whisk two eggs with sugar, fold in the flour and bake for 25 minutes.", False),
]


@pytest.mark.parametrize(("case", "text", "refused"), SIMILARITY_CASES, ids=[case[0] for case in SIMILARITY_CASES])
def test_similarity_refusals(similarity, case, text, refused):
    similarities, flagged = similarity.scores(load_encoder().encode([text]))

    assert find_refusal(text) is None
    assert bool(flagged[0]) is refused
    assert -1.0 <= float(similarities[0]) <= 1.0


@pytest.mark.xfail(strict=True, reason="a deflection without refusal words is 0.37 similar to the nearest refusal")
def test_similarity_misses_deflection(similarity):
    _, flagged = similarity.scores(load_encoder().encode(["Let's not go down that road. Is there something else I can do for you?"]))

    assert flagged[0]


@pytest.mark.parametrize("threshold", [0.0, 1.0])
def test_invalid_similarity_threshold(threshold):
    with pytest.raises(ValueError, match="refusal similarity threshold"):
        RefusalSimilarity(load_encoder(), threshold=threshold)
