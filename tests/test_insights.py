"""heredity insights (Clio): PII scrubbing, privacy thresholds, the auditor, clustering of known topics."""

import pytest

SCRUB_CASES = [  # (text, expected counts by type, a substring that must survive or be gone)
    ("mail me at jane.doe+x@example.co.uk please", {"email": 1}, "jane.doe"),
    ("card 4111 1111 1111 1111 exp 12/27", {"card": 1}, "4111"),
    ("card 4111-1111-1111-1111", {"card": 1}, "4111"),
    ("my SSN is 123-45-6789", {"national_id": 1}, "6789"),
    ("NI number AB 12 34 56 C", {"national_id": 1}, "AB 12"),
    ("server at 192.168.1.20 and 2001:0db8:85a3:0000:0000:8a2e:0370:7334", {"ip": 2}, "192.168"),
    ("call +1 415 555 0134 or (020) 7946 0958 or 415-555-0134", {"phone": 3}, "555"),
    ("clone https://bob:hunter2@git.example.com/repo.git", {"url_credentials": 1}, "hunter2"),
    ("Dr. Moreau said hi; my name is Ana Lopez; I met John Smith.", {"name": 3}, "Lopez"),
]
KEEP_CASES = [  # nothing to scrub: the text must come back unchanged
    "card 4111 1111 1111 1112 fails the Luhn check",
    "The year 2023 had 365 days and version 3.11.4 was out; order #12345.",
    "Python 3.12, the numbers 1 2 3 4 5 and the date 2024-01-15",
    "In New York the Statue of Liberty",
    "I'm going home; see https://example.com/docs",
    "the IP-like version 999.1.2.3 and 1.2.3",
]


@pytest.mark.parametrize(("text", "counts", "gone"), SCRUB_CASES)
def test_scrubber_replaces_pii_with_typed_placeholders(text, counts, gone):
    from heredity.insights.pii import PLACEHOLDERS, scrub

    s = scrub(text)
    assert dict(s.counts) == counts and gone not in s.text
    for kind in counts:
        assert PLACEHOLDERS[kind] in s.text


@pytest.mark.parametrize("text", KEEP_CASES)
def test_scrubber_leaves_text_without_pii_alone(text):
    from heredity.insights.pii import scrub

    s = scrub(text)
    assert s.text == text and not s.counts


def test_luhn():
    from heredity.insights.pii import luhn_ok

    assert luhn_ok("4111111111111111") and luhn_ok("79927398713") and not luhn_ok("4111111111111112")
