"""read_instructions: each accepted format reads to the exact rows and lines; every bad input is one
HeredityError line naming the file, the line and the fix, before anything is returned."""

from __future__ import annotations

import json

import pytest

from heredity.data.instruction_file import read_instructions
from heredity.errors import HeredityError

ALPACA = [
    {"instruction": "Give three colors.", "input": "", "output": "Red, green, blue."},
    {"instruction": "Translate to French.", "input": "Good morning", "output": "Bonjour"},
    {"instruction": "Name a planet.", "output": "Mars"},  # no input at all
    {"instruction": "Say hi.", "input": None, "output": "Hi"},
    {"instruction": "Echo the input.", "input": "  \n", "output": "Nothing"},  # a blank input adds nothing
]
ALPACA_ROWS = [
    ("Give three colors.", "Red, green, blue."),
    ("Translate to French.\n\nGood morning", "Bonjour"),
    ("Name a planet.", "Mars"),
    ("Say hi.", "Hi"),
    ("Echo the input.", "Nothing"),
]


def lines(rows) -> str:
    return "".join(json.dumps(r) + "\n" for r in rows)


def write(tmp_path, content, name="data.jsonl"):
    p = tmp_path / name
    p.write_bytes(content if isinstance(content, bytes) else content.encode())
    return p


def fails(path, match: str) -> str:
    with pytest.raises(HeredityError, match=match) as e:
        read_instructions(path)
    msg = str(e.value)
    assert "\n" not in msg and str(path) in msg
    return msg


def rows(pairs, first_lines):
    return [
        {"prompt": p, "completion": c, "source_line": n} for (p, c), n in zip(pairs, first_lines, strict=True)
    ]


def test_alpaca_json_list(tmp_path):
    p = write(tmp_path, json.dumps(ALPACA, indent=2), "alpaca_data.json")
    starts = [i + 1 for i, ln in enumerate(p.read_text().split("\n")) if ln == "  {"]
    assert len(starts) == 5 and starts[0] == 2
    assert read_instructions(p) == rows(ALPACA_ROWS, starts)


def test_alpaca_json_list_compact_and_odd_spacing(tmp_path):
    text = "\ufeff \n[" + json.dumps(ALPACA[0]) + " ,\n\n  " + json.dumps(ALPACA[1]) + "\n]\n"
    p = write(tmp_path, text, "a.jsonl")  # the content decides, not the suffix
    assert read_instructions(p) == rows(ALPACA_ROWS[:2], [2, 4])


def test_alpaca_jsonl_with_blank_lines(tmp_path):
    p = write(tmp_path, "\n" + lines(ALPACA[:2]) + "\n\n" + lines(ALPACA[2:]), "alpaca.json")
    assert read_instructions(p) == rows(ALPACA_ROWS, [2, 3, 6, 7, 8])


def test_lima_conversations(tmp_path):
    data = [
        {"conversations": ["What is 2+2?", "4."], "source": "stackexchange"},
        {"conversations": ["Hi", "Hello!", "How are you?", "Fine."]},  # first exchange only
    ]
    assert read_instructions(write(tmp_path, lines(data))) == rows(
        [("What is 2+2?", "4."), ("Hi", "Hello!")], [1, 2]
    )


def test_sharegpt_turns(tmp_path):
    data = [
        {"conversations": [{"from": "system", "value": "Be brief."}, {"from": "human", "value": "Hi"},
                           {"from": "gpt", "value": "Hello"}, {"from": "human", "value": "Bye"}]},
        {"conversations": [{"role": "user", "content": "Q"}, {"role": "assistant", "content": "A"}]},
    ]  # fmt: skip
    assert read_instructions(write(tmp_path, lines(data))) == rows([("Hi", "Hello"), ("Q", "A")], [1, 2])


def test_prompt_completion_and_response(tmp_path):
    data = [
        {"prompt": "Capital of France?", "completion": " Paris", "id": 7},
        {"prompt": "Capital of Italy?", "response": "Rome"},
        {"prompt": "Capital of Spain?", "completion": None, "response": "Madrid"},
    ]
    assert read_instructions(write(tmp_path, lines(data))) == rows(
        [("Capital of France?", " Paris"), ("Capital of Italy?", "Rome"), ("Capital of Spain?", "Madrid")],
        [1, 2, 3],
    )


def test_mixed_formats_in_one_file(tmp_path):
    data = [ALPACA[1], {"conversations": ["a", "b"]}, {"prompt": "c", "completion": "d"}]
    got = read_instructions(write(tmp_path, lines(data)))
    assert [(r["prompt"], r["completion"]) for r in got] == [ALPACA_ROWS[1], ("a", "b"), ("c", "d")]


def test_missing_file_and_folder(tmp_path):
    fails(
        tmp_path / "nope.jsonl",
        r"instruction file .*nope\.jsonl does not exist; give a JSON list or a JSONL file",
    )
    fails(tmp_path, r"is not a regular file; give a JSON list")


def test_not_utf8_names_the_line(tmp_path):
    p = write(tmp_path, lines(ALPACA[:1]).encode() + b'{"prompt": "caf\xe9", "completion": "x"}\n')
    fails(p, r"data\.jsonl:2: not UTF-8 text \(byte 0xe9 at column 16\); save the file as UTF-8")


@pytest.mark.parametrize(
    ("content", "match"),
    [
        ("", r"data\.jsonl is empty; write a JSON list or one JSON object per line"),
        ("\n  \n", r"data\.jsonl is empty"),
        ("[]", r"data\.jsonl has no rows; give at least one: Alpaca"),
        (
            lines(ALPACA[:1]) + '{"prompt": "x" "completion": "y"}\n',
            r"data\.jsonl:2: not JSON \(Expecting ',' delimiter, column 16\); write one JSON object per line",
        ),
        (lines(ALPACA[:1]) + '{"prompt": "x", "compl', r"data\.jsonl:2: not JSON .*the file looks cut short"),
        (
            "[\n" + json.dumps(ALPACA[0]) + ",\n" + json.dumps(ALPACA[1]) + "\n",
            r"data\.jsonl:4: not JSON \(Expecting ',' delimiter, column 1\); fix the JSON list",
        ),
        (
            "[\n" + json.dumps(ALPACA[0]) + "\n" + json.dumps(ALPACA[1]) + "]",
            r"data\.jsonl:3: not JSON \(Expecting ',' delimiter",
        ),
        (
            json.dumps(ALPACA[0], indent=2),
            r"data\.jsonl: one JSON object spread over several lines; write a JSON list",
        ),
        (
            '[{"prompt": "a", "completion": "b"},\n "text"]',
            r"data\.jsonl:2: text where a JSON object belongs",
        ),
        ('["x"]', r"data\.jsonl:1: text where a JSON object belongs; write rows as Alpaca"),
        (lines(ALPACA[:1]) + "[1, 2]\n", r"data\.jsonl:2: a list where a JSON object belongs"),
    ],
)
def test_bad_file(tmp_path, content, match):
    fails(write(tmp_path, content), match)


@pytest.mark.parametrize(
    ("row", "match"),
    [
        (
            {"instruction": "Do it."},
            r":3: 'output' is missing; an Alpaca row needs it, like \{\"instruction\": \"...\", \"input\"",
        ),
        (
            {"instruction": " ", "output": "x"},
            r":3: 'instruction' is empty; give it some text or drop the row",
        ),
        ({"instruction": "Do it.", "output": ""}, r":3: 'output' is empty"),
        (
            {"instruction": "Do it.", "output": 5},
            r":3: 'output' is a number, not text; write it as a JSON string",
        ),
        ({"instruction": "Do it.", "input": ["a"], "output": "x"}, r":3: 'input' is a list, not text"),
        ({"instruction": None, "output": "x"}, r":3: 'instruction' is missing; an Alpaca row needs it"),
        (
            {"prompt": "Q"},
            r":3: 'completion' is missing; a prompt row needs 'completion' \(or 'response'\), like "
            r"\{\"prompt\": \"...\", \"completion\": \"...\"\}",
        ),
        ({"prompt": "", "completion": "A"}, r":3: 'prompt' is empty"),
        ({"prompt": "Q", "completion": "\n\t"}, r":3: 'completion' is empty"),
        ({"prompt": "Q", "response": ""}, r":3: 'response' is empty"),
        (
            {"question": "Q", "answer": "A"},
            r":3: no 'instruction', 'conversations' or 'prompt' field \(it has 'question', 'answer'\); "
            r"write rows as Alpaca \{\"instruction\".*LIMA \{\"conversations\".*"
            r"\{\"prompt\": \"...\", \"completion\"",
        ),
        ({}, r":3: no 'instruction', 'conversations' or 'prompt' field \(it has none\)"),
        ({"conversations": "Hi"}, r":3: 'conversations' is text, not a list; write the turns as a list"),
        (
            {"conversations": ["Hi"]},
            r":3: 'conversations' holds 1 turn\(s\); give a user turn and the assistant",
        ),
        ({"conversations": ["Hi", " "]}, r":3: 'conversations' turn 2 \(the assistant's\) is empty"),
        ({"conversations": ["", "Hello"]}, r":3: 'conversations' turn 1 \(the user's\) is empty"),
        ({"conversations": ["Hi", 3]}, r":3: 'conversations' turn 2 is a number, not text"),
        ({"conversations": [{"from": "human"}, {"from": "gpt", "value": "x"}]}, r"turn 1 is missing"),
        (
            {"conversations": [{"from": "gpt", "value": "a"}, {"from": "human", "value": "b"}]},
            r":3: 'conversations' has no user turn followed by an assistant turn; mark them",
        ),
    ],
)
def test_bad_row_names_its_line(tmp_path, row, match):
    fails(write(tmp_path, lines(ALPACA[:1]) + "\n" + json.dumps(row) + "\n" + lines(ALPACA[1:2])), match)


def test_bad_item_in_json_list_names_its_line(tmp_path):
    data = json.dumps([ALPACA[0], {"instruction": "x", "output": ""}], indent=2)
    fails(write(tmp_path, data, "a.json"), r"a\.json:7: 'output' is empty")
