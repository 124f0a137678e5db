"""PII by pattern with Presidio's recognizers, offline and without an NLP engine."""

import socket

import pytest

from controlplane.detectors.pii import PiiDetector, PiiMatch


@pytest.fixture(scope="module")
def detector():
    return PiiDetector()


PII_CASES = [
    # (case, text, expected [(entity type, matched original text)])
    ("email", "Write to jane.roe@example.com today.", [("EMAIL_ADDRESS", "jane.roe@example.com")]),
    ("email with unknown suffix", "Write to jane@host.notatld today.", []),
    ("valid card", "Card 4111 1111 1111 1111 on file.", [("CREDIT_CARD", "4111 1111 1111 1111")]),
    ("Luhn-invalid card", "Card 4111 1111 1111 1112 on file.", []),
    ("card with dashes", "Card 5555-5555-5555-4444.", [("CREDIT_CARD", "5555-5555-5555-4444")]),
    ("US phone", "Call +1 415-555-0132 now.", [("PHONE_NUMBER", "+1 415-555-0132")]),
    ("valid IBAN", "IBAN DE89 3704 0044 0532 0130 00 please", [("IBAN_CODE", "DE89 3704 0044 0532 0130 00")]),
    ("IBAN with bad check digits", "IBAN DE89 3704 0044 0532 0130 01 please", []),
    ("US SSN", "My SSN is 536-22-8726.", [("US_SSN", "536-22-8726")]),
    ("published sample SSN", "My SSN is 123-45-6789.", []),
    ("IP address", "The server is 192.168.1.10 here.", [("IP_ADDRESS", "192.168.1.10")]),
    ("loopback address", "Listen on 127.0.0.1 or 0.0.0.0 or ::1.", []),
    ("IPv6 address", "Peer 2001:db8:85a3::8a2e:370:7334 joined.", [("IP_ADDRESS", "2001:db8:85a3::8a2e:370:7334")]),
    ("list of small numbers", "Average of 1 2 3 4 5 6 7 8 9 10 is 5.5", []),
    ("UK phone", "Ring +44 20 7946 0958 today.", [("PHONE_NUMBER", "+44 20 7946 0958")]),
    ("ZIP+4 code only", "Ship to 94107-1234.", []),
    ("no PII", "Write a function that returns the sum of two numbers.", []),
    ("code without PII", "for i in range(10):\n    total += i * 3.14159", []),
    (
        "email and card",
        "mail a@example.org, card 4111111111111111",
        [("EMAIL_ADDRESS", "a@example.org"), ("CREDIT_CARD", "4111111111111111")],
    ),
    ("zero-width inside email", "mail j\u200bo@exa\u200bmple.com", [("EMAIL_ADDRESS", "j\u200bo@exa\u200bmple.com")]),
    (
        "fullwidth card digits",
        "card ４１１１ １１１１ １１１１ １１１１",
        [("CREDIT_CARD", "４１１１ １１１１ １１１１ １１１１")],
    ),
    ("en dash phone", "Call 415–555–0132.", [("PHONE_NUMBER", "415–555–0132")]),
]


@pytest.mark.parametrize(("case", "text", "expected"), PII_CASES, ids=[case[0] for case in PII_CASES])
def test_pii_cases(detector, case, text, expected):
    found = [(match.entity_type, text[match.start : match.end]) for match in detector.find(text)]

    assert found == expected


def test_scores_of_checksum_patterns(detector):
    matches = detector.find("a@example.org 4111111111111111")

    assert [match.score for match in matches] == [1.0, 1.0]


def test_card_not_also_phone(detector):
    matches = detector.find("4111 1111 1111 1111")

    assert matches == [PiiMatch("CREDIT_CARD", 0, 19, 1.0)]


def test_empty_text(detector):
    assert detector.find("") == []


def test_unknown_entity_rejected():
    with pytest.raises(ValueError, match="PERSON"):
        PiiDetector(entities=["PERSON"])


def test_url_optional():
    detector = PiiDetector(entities=["URL"])

    found = [match.entity_type for match in detector.find("see https://example.com/a for more")]

    assert found == ["URL"]


def test_no_network_access(monkeypatch):
    # Presidio's own EmailRecognizer fails here when tldextract has no cached list:
    # it resolves publicsuffix.org to download the Public Suffix List.
    def refuse_connect(*args, **kwargs):
        raise AssertionError(f"network connection attempted: {args[1:]}")

    monkeypatch.setattr(socket.socket, "connect", refuse_connect)
    monkeypatch.setattr(socket.socket, "connect_ex", refuse_connect)
    monkeypatch.setattr(socket, "getaddrinfo", refuse_connect)
    detector = PiiDetector()

    found = [match.entity_type for match in detector.find("write to someone@example.co.uk")]

    assert found == ["EMAIL_ADDRESS"]
