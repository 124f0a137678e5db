"""Personal data found by pattern, with Presidio's predefined recognizers and no NLP engine.

Presidio's `AnalyzerEngine` loads the spaCy model `en_core_web_lg` by default, which this
project neither installs nor downloads. The recognizers used here are self-contained
(regular expressions with checksums, and the `phonenumbers` library), so they are built
directly and called without NLP artifacts. Without those artifacts Presidio's
context-word boost is also off: scores are the recognizers' base scores.
"""

from __future__ import annotations

import ipaddress
import logging
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from controlplane.detectors.normalize import normalize_with_offsets
from controlplane.errors import DetectorError

logger = logging.getLogger(__name__)

DEFAULT_ENTITIES = ("EMAIL_ADDRESS", "PHONE_NUMBER", "CREDIT_CARD", "IBAN_CODE", "US_SSN", "IP_ADDRESS")
OPTIONAL_ENTITIES = ("URL",)

# Drops the "very weak" US_SSN patterns (score 0.05, any nine digits or a ZIP+4 code)
# and the bare IPv6 "::" (0.1), and keeps phone numbers (0.4) and everything stronger.
DEFAULT_MIN_SCORE = 0.4


# Cheap necessary conditions, checked before each recognizer runs: a text without any of these
# cannot contain that entity, and most traffic has none. Presidio's phone recognizer
# (the phonenumbers library) costs about 1 ms per text, so skipping it matters most.
CANDIDATE_PATTERNS = {
    "EMAIL_ADDRESS": re.compile(r"@"),
    "PHONE_NUMBER": re.compile(r"(?:\d[^\w\n]{0,3}){7,}"),
    "CREDIT_CARD": re.compile(r"(?:\d[\s\-]?){12,}\d"),
    "IBAN_CODE": re.compile(r"[A-Za-z]{2}\s?\d{2}"),
    "US_SSN": re.compile(r"\d{3}\D{0,2}\d{2}\D{0,2}\d{4}"),
    "IP_ADDRESS": re.compile(r"\d{1,3}\.\d{1,3}\.\d{1,3}\.\d{1,3}|[0-9A-Fa-f]{0,4}:[0-9A-Fa-f]{0,4}:"),
    "URL": re.compile(r"://|www\.|\.[a-z]{2,}", re.IGNORECASE),
}


@dataclass(frozen=True)
class PiiMatch:
    """One piece of personal data at [start, end) of the original text."""

    entity_type: str
    start: int
    end: int
    score: float


class PiiDetector:
    """Detector of emails, phone numbers, payment cards, IBANs, US SSNs and IP addresses in text."""

    def __init__(self, entities: Sequence[str] = DEFAULT_ENTITIES, min_score: float = DEFAULT_MIN_SCORE) -> None:
        unknown = sorted(set(entities) - set(DEFAULT_ENTITIES) - set(OPTIONAL_ENTITIES))
        if unknown:
            supported = ", ".join(DEFAULT_ENTITIES + OPTIONAL_ENTITIES)
            raise ValueError(f"unsupported PII entity types {unknown}. Choose from {supported}.")
        self.entities = tuple(entities)
        self.min_score = min_score
        self._recognizers = _build_recognizers(self.entities)

    def find(self, text: str) -> list[PiiMatch]:
        """Return the personal data in `text`, at offsets of `text` itself, ordered by start."""
        if not text:
            return []
        normalized = normalize_with_offsets(text)
        found = []
        for entity, recognizer in zip(self.entities, self._recognizers, strict=True):
            if not CANDIDATE_PATTERNS[entity].search(normalized.text):
                continue
            for result in recognizer.analyze(normalized.text, list(recognizer.supported_entities), None):
                matched = normalized.text[result.start : result.end]
                if result.score >= self.min_score and not _is_placeholder(result.entity_type, matched):
                    start, end = normalized.to_original(result.start, result.end)
                    found.append(PiiMatch(result.entity_type, start, end, float(result.score)))
        return _drop_overlaps(found)


def _is_placeholder(entity_type: str, matched: str) -> bool:
    # 127.0.0.1, ::1 and 0.0.0.0 name no one; they fill code samples and server configs.
    if entity_type != "IP_ADDRESS":
        return False
    try:
        address = ipaddress.ip_interface(matched).ip
    except ValueError:
        return False
    return address.is_loopback or address.is_unspecified


def _drop_overlaps(matches: list[PiiMatch]) -> list[PiiMatch]:
    # One label per stretch of text: a card number is not also counted as a phone
    # number. The higher score wins, then the longer match.
    kept: list[PiiMatch] = []
    for match in sorted(matches, key=lambda item: (-item.score, item.start - item.end, item.start)):
        if all(match.end <= other.start or match.start >= other.end for other in kept):
            kept.append(match)
    return sorted(kept, key=lambda item: (item.start, item.end))


def _build_recognizers(entities: Sequence[str]) -> list:
    try:
        factories = _recognizer_factories()
        return [factories[entity]() for entity in entities]
    except (ImportError, OSError) as error:
        message = f"PII recognizers failed to load: {error}. Reinstall presidio-analyzer and tldextract."
        raise DetectorError(message) from error


def _recognizer_factories() -> dict[str, Callable[[], object]]:
    # Importing presidio_analyzer takes seconds (it imports spaCy and transformers), so it
    # happens when a detector is built, not when this module is imported.
    from presidio_analyzer.predefined_recognizers import (
        CreditCardRecognizer,
        IbanRecognizer,
        IpRecognizer,
        PhoneRecognizer,
        UrlRecognizer,
        UsSsnRecognizer,
    )

    return {
        "EMAIL_ADDRESS": _offline_email_recognizer,
        # Strict grouping (leniency 2) drops digit runs such as "1 2 3 4 5 6 7 8 9 10",
        # which Presidio's default (leniency 1, any valid number) reports as phone numbers.
        "PHONE_NUMBER": lambda: PhoneRecognizer(leniency=2),
        "CREDIT_CARD": CreditCardRecognizer,  # keeps only numbers that pass the Luhn check
        "IBAN_CODE": IbanRecognizer,  # keeps only codes whose check digits are valid
        "US_SSN": UsSsnRecognizer,
        "IP_ADDRESS": IpRecognizer,
        "URL": UrlRecognizer,
    }


def _offline_email_recognizer() -> object:
    import tldextract
    from presidio_analyzer.predefined_recognizers import EmailRecognizer

    # Presidio validates the domain with `tldextract.extract`, whose default extractor
    # downloads the Public Suffix List on first use. This one reads only the snapshot
    # bundled with tldextract and writes no cache.
    extract = tldextract.TLDExtract(cache_dir=None, suffix_list_urls=(), fallback_to_snapshot=True)

    class OfflineEmailRecognizer(EmailRecognizer):
        def validate_result(self, pattern_text: str) -> bool:
            return extract(pattern_text).fqdn != ""

    return OfflineEmailRecognizer()
