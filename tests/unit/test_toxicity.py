"""Offensive-language probability on normalized text."""

import profanity_check
import pytest

from controlplane.detectors.toxicity import offensive_probabilities

THRESHOLD = 0.5

CLEAN_TEXTS = [
    "Please write a Python function that sorts a list.",
    "Have a nice day.",
    "In 2024 we shipped 3 releases.",
    "Explain the difference between a list and a tuple.",
]

PLAIN_OFFENSIVE_TEXTS = [
    "you are an idiot",
    "this is shit",
]

# Spellings the model alone misses, each caught after normalization.
EVASION_CASES = [
    ("leetspeak digit", "sh1t"),
    ("leetspeak word in a sentence", "you are an 1d10t"),
    ("Cyrillic look-alikes", "ѕhіt"),
    ("zero-width space", "you are a f\u200bool"),
    ("fullwidth letters", "ｓｈｉｔ"),
    ("spaced letters", "s h i t"),
]


@pytest.mark.parametrize("text", CLEAN_TEXTS)
def test_clean_text_below_threshold(text):
    assert offensive_probabilities([text])[0] < THRESHOLD


@pytest.mark.parametrize("text", PLAIN_OFFENSIVE_TEXTS)
def test_plain_offensive_text_flagged(text):
    assert offensive_probabilities([text])[0] >= THRESHOLD


@pytest.mark.parametrize(("case", "text"), EVASION_CASES, ids=[case[0] for case in EVASION_CASES])
def test_evasion_caught_after_normalization(case, text):
    raw_probability = float(profanity_check.predict_prob([text])[0])

    assert raw_probability < THRESHOLD
    assert offensive_probabilities([text])[0] >= THRESHOLD


def test_empty_texts_score_zero():
    assert offensive_probabilities(["", "   \n"]) == [0.0, 0.0]


def test_batch_keeps_order():
    probabilities = offensive_probabilities(["Have a nice day.", "this is shit", "", "sh1t"])

    assert len(probabilities) == 4
    assert probabilities[0] < THRESHOLD
    assert probabilities[1] >= THRESHOLD
    assert probabilities[2] == 0.0
    assert probabilities[3] >= THRESHOLD


def test_empty_batch():
    assert offensive_probabilities([]) == []
