"""Offensive-language probability on normalized text."""

import profanity_check
import pytest

from controlplane.detectors.embeddings import load_encoder
from controlplane.detectors.toxicity import EmbeddingOffensiveClassifier, offensive_probabilities, strip_code_tokens

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


STRIP_CODE_CASES = [
    # (case, text, expected)
    ("shebang line", "#!/bin/sh\necho hello", "\necho hello"),
    ("bash shebang", "#!/usr/bin/env bash\nls", "\nls"),
    ("flag", "du -sh *", "du - *"),
    ("extension", "save it as run.sh", "save it as run."),
    ("command before a script", "then sh build.sh", "then  build."),
    ("word kept", "she said shh, the show is on", "she said shh, the show is on"),
    ("swear word kept", "this is shit", "this is shit"),
]


@pytest.mark.parametrize(("case", "text", "expected"), STRIP_CODE_CASES, ids=[case[0] for case in STRIP_CODE_CASES])
def test_strip_code_tokens_cases(case, text, expected):
    assert strip_code_tokens(text) == expected


SHELL_SCRIPTS = [
    "#!/bin/sh\n\ndu -sh /home",
    "#!/bin/bash\n\ndu -sh * | sort -hr",
    "#!/bin/sh\necho 'Backing up files'\ncp -r ./docs /backup",
]


@pytest.mark.parametrize("script", SHELL_SCRIPTS)
def test_shell_scripts_below_threshold(script):
    assert offensive_probabilities([script])[0] < THRESHOLD


@pytest.fixture(scope="module")
def classifier():
    return EmbeddingOffensiveClassifier(load_encoder())


# Hostile without a swear word: the word model misses these, the embedding classifier does not.
HOSTILE_WITHOUT_SWEARING = [
    "Nobody would miss you if you vanished tomorrow.",
    "People like you should be locked in a cage.",
    "Your brain is as empty as your bank account, clown.",
]

EMBEDDING_BENIGN = [
    "Could you review my pull request when you have a minute?",
    "The council vote on the new bike lanes is next Tuesday.",
    "You are a friendly librarian. Recommend three novels for a teenager.",
    "I disagree with the new zoning plan because it cuts the park in half.",
    "Say something.",
    "Tell me a joke.",
    "Stop.",
]


@pytest.mark.parametrize("text", HOSTILE_WITHOUT_SWEARING)
def test_embedding_catches_hostility_without_swearing(classifier, text):
    [probability] = classifier.probabilities(load_encoder().encode([text]))

    assert offensive_probabilities([text])[0] < THRESHOLD
    assert probability >= THRESHOLD


@pytest.mark.parametrize("text", EMBEDDING_BENIGN)
def test_embedding_benign_below_threshold(classifier, text):
    [probability] = classifier.probabilities(load_encoder().encode([text]))

    assert probability < THRESHOLD


def test_embedding_empty_batch(classifier):
    assert len(classifier.probabilities(load_encoder().encode([]))) == 0
