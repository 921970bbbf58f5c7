"""A generated demo corpus: conversations over known topics, several users each, some with planted PII.

Every conversation records the topic it was generated from (``true_topic``), so clustering can be scored
against the truth (adjusted Rand index) and the report can show recovered vs true topics. One topic is
deliberately rare — few users — so the privacy thresholds must hide it. The corpus is deterministic in
``seed``; the same one ships as ``demo_conversations.jsonl`` beside this module.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

DEMO_FILE = Path(__file__).with_name("demo_conversations.jsonl")

TOPICS: dict[str, dict] = {
    "python debugging": {
        "asks": [
            "My Python script fails with a {err} when I {act}. How do I fix it?",
            "Why does my Python code raise {err} after I {act}?",
            "I get a {err} in Python every time I {act}. What am I doing wrong?",
        ],
        "slots": {
            "err": ["KeyError", "TypeError", "IndexError", "ValueError", "AttributeError", "ImportError"],
            "act": [
                "read a JSON file",
                "loop over a dictionary",
                "call a method on None",
                "parse a CSV row",
                "import my module",
                "sort a list of tuples",
            ],
        },
        "answer": (
            "Check the line in the traceback: the {err} means the value is not what the code expects there."
        ),
    },
    "cooking recipes": {
        "asks": [
            "How do I make {dish} for {n} people?",
            "Can you give me a simple recipe for {dish}?",
            "What can I use instead of {ing} when cooking {dish}?",
        ],
        "slots": {
            "dish": ["lasagna", "banana bread", "vegetable curry", "pancakes", "risotto", "tomato soup"],
            "n": ["two", "four", "six", "eight"],
            "ing": ["butter", "eggs", "cream", "flour", "sugar"],
        },
        "answer": "For {dish}, start with the base ingredients, cook slowly and season at the end.",
    },
    "travel planning": {
        "asks": [
            "Plan a {d}-day trip to {city} on a budget.",
            "What should I see in {city} in {d} days?",
            "Is {month} a good time to visit {city}?",
        ],
        "slots": {
            "d": ["three", "five", "seven", "ten"],
            "city": ["Lisbon", "Kyoto", "Mexico City", "Prague", "Cape Town"],
            "month": ["March", "July", "October", "December"],
        },
        "answer": "In {city}, group the sights by neighbourhood and book the popular ones ahead.",
    },
    "job applications": {
        "asks": [
            "Help me write a cover letter for a {role} position.",
            "How should I describe my {role} experience on a resume?",
            "What questions will they ask in a {role} interview?",
        ],
        "slots": {
            "role": ["data analyst", "nurse", "software engineer", "teacher", "project manager", "accountant"]
        },
        "answer": (
            "Lead with a concrete result from your {role} work, then tie it to what the employer needs."
        ),
    },
    "math homework": {
        "asks": [
            "How do I solve {eq}?",
            "Can you explain how to {task}?",
            "I don't understand how to {task}, help?",
        ],
        "slots": {
            "eq": ["2x + 3 = 11", "x^2 - 5x + 6 = 0", "3(x - 2) = 12", "x / 4 + 1 = 3"],
            "task": [
                "find the derivative of x^3",
                "compute the area of a circle",
                "add two fractions",
                "factor a quadratic",
                "find the slope of a line",
            ],
        },
        "answer": "Isolate the unknown step by step and check the result by substituting it back.",
    },
    "fitness plans": {
        "asks": [
            "Make me a {d}-week plan to {goal}.",
            "What exercises help me {goal}?",
            "How often should I train to {goal}?",
        ],
        "slots": {
            "d": ["four", "six", "eight", "twelve"],
            "goal": [
                "run a 5k",
                "build upper body strength",
                "lose weight",
                "improve flexibility",
                "train for a marathon",
            ],
        },
        "answer": (
            "Train three to four times a week, increase the load slowly and rest between hard sessions."
        ),
    },
    "gardening": {
        "asks": [
            "Why are the leaves on my {plant} turning {color}?",
            "When should I plant {plant}?",
            "How much water does a {plant} need?",
        ],
        "slots": {
            "plant": ["tomato plant", "rose bush", "basil", "lemon tree", "orchid", "lavender"],
            "color": ["yellow", "brown", "pale", "spotted"],
        },
        "answer": (
            "Check the soil moisture and the light first; most {plant} problems come from one of the two."
        ),
    },
    "writing emails": {
        "asks": [
            "Write a polite email to my {who} about {issue}.",
            "How do I tell my {who} about {issue} by email?",
            "Draft a short message to my {who} regarding {issue}.",
        ],
        "slots": {
            "who": ["landlord", "manager", "professor", "neighbour", "client"],
            "issue": [
                "a broken heater",
                "a deadline extension",
                "a noisy party",
                "a late payment",
                "a schedule change",
            ],
        },
        "answer": "Dear {who_title}, state the issue in one sentence, propose a next step, and thank them.",
    },
}
RARE_TOPIC = {  # few users: must never appear in any output
    "name": "custody dispute advice",
    "asks": [
        "My ex and I are fighting over custody of our daughter in {place}; what are my rights?",
        "Can I move to {place} with my son during the custody case?",
    ],
    "slots": {"place": ["Ohio", "Bavaria", "Ontario"]},
    "answer": "Custody rules depend on where you live; a family lawyer there can tell you your rights.",
}
PII_SNIPPETS = [
    "My name is {first} {last}.",
    "You can reach me at {email}.",
    "Call me on +1 415 555 {d4}.",
    "I'm {first} {last}, by the way.",
    "My card is 4111 1111 1111 1111, is that relevant?",
]
FIRSTS = ["Maria", "John", "Aisha", "Kenji", "Sofia", "David", "Priya", "Lucas"]
LASTS = ["Garcia", "Smith", "Okafor", "Tanaka", "Rossi", "Cohen", "Patel", "Martin"]


def _fill(template: str, slots: dict[str, list[str]], rng: random.Random, chosen: dict[str, str]) -> str:
    for key, values in slots.items():
        if "{" + key + "}" in template:
            chosen.setdefault(key, rng.choice(values))
    return template.format(**chosen, who_title=chosen.get("who", "Sir or Madam").title())


def demo_conversations(
    n: int = 480, users: int = 60, rare: int = 12, rare_users: int = 3, pii_share: float = 0.2, seed: int = 0
) -> list[dict]:
    """``n`` conversations over ``TOPICS`` (evenly) by ``users`` users, plus ``rare`` on a rare topic by only
    ``rare_users`` users; ``pii_share`` of user turns carry a planted name, email, phone or card number."""
    rng = random.Random(seed)
    topics = list(TOPICS)
    out = []
    for i in range(n + rare):
        if i < n:
            name, spec = topics[i % len(topics)], TOPICS[topics[i % len(topics)]]
            user = f"u{rng.randrange(users):03d}"
        else:
            name, spec = RARE_TOPIC["name"], RARE_TOPIC
            user = f"r{rng.randrange(rare_users):03d}"
        chosen: dict[str, str] = {}
        ask = _fill(rng.choice(spec["asks"]), spec["slots"], rng, chosen)
        if rng.random() < pii_share:
            first, last = rng.choice(FIRSTS), rng.choice(LASTS)
            snippet = rng.choice(PII_SNIPPETS).format(
                first=first,
                last=last,
                email=f"{first.lower()}.{last.lower()}@example.com",
                d4=f"{rng.randrange(10000):04d}",
            )
            ask = f"{ask} {snippet}" if rng.random() < 0.5 else f"{snippet} {ask}"
        answer = _fill(spec["answer"], spec["slots"], rng, chosen)
        out.append(
            {
                "conversation_id": f"demo-{i:04d}",
                "user_id": user,
                "true_topic": name,
                "messages": [{"role": "user", "content": ask}, {"role": "assistant", "content": answer}],
            }
        )
    rng.shuffle(out)
    return out


def write_demo(path: Path = DEMO_FILE, **kw) -> Path:
    path.write_text("".join(json.dumps(c) + "\n" for c in demo_conversations(**kw)))
    return path


def load_demo() -> list[dict]:
    return [json.loads(line) for line in DEMO_FILE.read_text().splitlines() if line.strip()]
