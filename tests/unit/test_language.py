"""Tests of the language of sampled prompts, detected offline with lingua."""

import pytest

from controlplane.detectors.language import UNKNOWN, detect_languages


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("Write a Python function that returns the largest prime factor of a number.", "en"),
        ("Schreibe eine Funktion, die die größte Primzahl einer Liste zurückgibt.", "de"),
        ("Écris une fonction qui renvoie le plus grand nombre premier d'une liste.", "fr"),
        ("Escribe una función que devuelva el mayor número primo de una lista.", "es"),
        ("写一个函数，返回列表中最大的质数。", "zh"),
        ("Напиши функцию, которая возвращает наибольшее простое число из списка.", "ru"),
        ("", UNKNOWN),
        ("12345 + 67890 = ?", UNKNOWN),
    ],
)
def test_language_of_one_text(text, expected):
    assert detect_languages([text]) == [expected]


def test_languages_keep_input_order():
    texts = ["Bonjour, comment allez-vous aujourd'hui ?", "", "How do I reverse a linked list in place?"]

    assert detect_languages(texts) == ["fr", UNKNOWN, "en"]


def test_no_texts_give_no_languages():
    assert detect_languages([]) == []


def test_language_outside_the_set_counts_as_close_kin():
    # Swedish is not in the detector's set of languages.
    codes = detect_languages(["Skriv en funktion som returnerar det största primtalet i en lista med heltal."])

    assert codes == ["de"]
