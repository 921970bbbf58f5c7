"""PII scrubbing: typed placeholders for personal data, before any model or person sees a conversation.

Detected (in this order, so a longer match wins over its parts): URLs with credentials, emails, card
numbers (13–19 digits, spaces or dashes allowed, kept only if the Luhn checksum holds), national-id-like
numbers (US SSN ``123-45-6789``, UK NI ``AB 12 34 56 C``, and long digit runs written in groups), IPv4 and
IPv6 addresses, phone numbers (international ``+..`` or 10+ digits in the usual groupings), and personal names
introduced by a title or a phrase ("Dr. Moreau", "my name is Ana Lopez") or a first name from a bundled
list followed by a capitalized word. Replacements are ``[EMAIL]``, ``[CARD]``, … ; ``scrub`` returns the
text and the count per type.
"""

from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass, field

PLACEHOLDERS = {
    "url_credentials": "[URL_WITH_CREDENTIALS]",
    "email": "[EMAIL]",
    "card": "[CARD]",
    "national_id": "[NATIONAL_ID]",
    "ip": "[IP]",
    "phone": "[PHONE]",
    "name": "[NAME]",
}

URL_CRED = re.compile(r"\b[a-z][a-z0-9+.-]*://[^\s/:@]+:[^\s/@]+@[^\s]+", re.IGNORECASE)
EMAIL = re.compile(r"\b[A-Za-z0-9._%+-]+@[A-Za-z0-9.-]+\.[A-Za-z]{2,}\b")
CARD = re.compile(r"(?<![\d-])(?:\d[ -]?){12,18}\d(?![\d-])")
SSN = re.compile(r"(?<!\d)\d{3}-\d{2}-\d{4}(?!\d)")
UK_NI = re.compile(r"\b[A-CEGHJ-PR-TW-Z]{2}\s?\d{2}\s?\d{2}\s?\d{2}\s?[A-D]\b")
IPV4 = re.compile(r"(?<![\d.])(?:(?:25[0-5]|2[0-4]\d|1?\d?\d)\.){3}(?:25[0-5]|2[0-4]\d|1?\d?\d)(?![\d.])")
IPV6 = re.compile(
    r"(?<![\w:])(?:[0-9a-fA-F]{1,4}:){7}[0-9a-fA-F]{1,4}(?![\w:])"
    r"|(?<![\w:])(?:[0-9a-fA-F]{1,4}:){1,6}:(?:[0-9a-fA-F]{1,4}:?){1,6}(?![\w:])"
)
PHONE = re.compile(
    r"(?:(?<![\w+])\+\d{1,3}[\s.-]?|(?<![\w+(]))(?:\(\d{2,4}\)[\s.-]?)?\d{2,4}(?:[\s.-]\d{2,4}){1,4}(?![\w-])"
    r"|(?<![\w+])\+\d{8,14}(?!\w)"
)
TITLE_NAME = re.compile(r"\b(?:Mr|Mrs|Ms|Miss|Dr|Prof|Sir|Madam)\.?\s+[A-Z][a-z]+(?:\s+[A-Z][a-z]+)?")
INTRO_NAME = re.compile(
    r"\b(?:[Mm]y name is|I am|I'm|[Cc]all me|[Tt]his is|[Ss]igned|[Rr]egards,|[Tt]hanks,|[Dd]ear)\s+"
    r"([A-Z][a-z]+(?:\s+[A-Z][a-z]+)?)"
)

FIRST_NAMES = set(
    """
aaron adam adrian ahmed aisha alan albert alejandro alex alexander alice alicia amanda amelia amir amy ana
andrea andrew angela anna anne anthony antonio arjun ashley barbara ben benjamin beth betty bob brandon brian
bruce carlos carmen carol caroline catherine charles charlotte chen chloe chris christina christopher claire
daniel david deborah diana diego dmitri donald dorothy edward elena elizabeth ella emily emma eric ethan eva
fatima felix fernando fiona frank gabriel george grace hannah harry helen henry hiroshi hugo ian irene isabel
isabella ivan jack jacob james jane jason jennifer jessica joan john jonathan jorge jose joseph joshua juan
julia julie karen kate katherine kenji kevin laura lauren leo li linda lisa lucas lucy luis maria mark martha
martin mary matthew maya megan mei michael michelle mohammed nancy natalie nathan nicole noah olga oliver
olivia omar patricia paul peter priya rachel rahul raj rebecca richard robert rosa ryan samuel sandra sara
sarah scott sofia sophia stephen steven susan thomas tom victoria william yuki zoe
""".split()
)
FIRST_NAME = re.compile(r"\b([A-Z][a-z]+)\s+([A-Z][a-z]+)\b")


def luhn_ok(digits: str) -> bool:
    """The Luhn checksum of a card number (digits only)."""
    total = 0
    for i, ch in enumerate(reversed(digits)):
        d = int(ch)
        if i % 2:
            d *= 2
            if d > 9:
                d -= 9
        total += d
    return total % 10 == 0


@dataclass
class Scrubbed:
    text: str
    counts: Counter = field(default_factory=Counter)


def _sub(pattern: re.Pattern, kind: str, text: str, counts: Counter, keep=None, group: int = 0) -> str:
    def repl(m: re.Match) -> str:
        if keep is not None and not keep(m):
            return m.group(0)
        counts[kind] += 1
        if group:
            return (
                m.group(0)[: m.start(group) - m.start(0)]
                + PLACEHOLDERS[kind]
                + m.group(0)[m.end(group) - m.start(0) :]
            )
        return PLACEHOLDERS[kind]

    return pattern.sub(repl, text)


def _is_card(m: re.Match) -> bool:
    digits = re.sub(r"\D", "", m.group(0))
    return 13 <= len(digits) <= 19 and luhn_ok(digits)


def scrub(text: str, names: bool = True) -> Scrubbed:
    """``text`` with PII replaced by typed placeholders, and how many of each type were replaced."""
    counts: Counter = Counter()
    text = _sub(URL_CRED, "url_credentials", text, counts)
    text = _sub(EMAIL, "email", text, counts)
    text = _sub(CARD, "card", text, counts, keep=_is_card)
    text = _sub(SSN, "national_id", text, counts)
    text = _sub(UK_NI, "national_id", text, counts)
    text = _sub(IPV4, "ip", text, counts)
    text = _sub(IPV6, "ip", text, counts)
    text = _sub(
        PHONE, "phone", text, counts, keep=lambda m: 9 <= len(re.sub(r"\D", "", m.group(0))) <= 15
    )  # E.164: ≤ 15
    if names:
        text = _sub(TITLE_NAME, "name", text, counts)
        text = _sub(INTRO_NAME, "name", text, counts, group=1)
        text = _sub(FIRST_NAME, "name", text, counts, keep=lambda m: m.group(1).lower() in FIRST_NAMES)
    return Scrubbed(text, counts)


def find_pii(text: str) -> Counter:
    """What ``scrub`` would replace (the privacy auditor's rule check)."""
    return scrub(text).counts
