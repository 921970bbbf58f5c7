"""A user's instruction set on disk, read into rows ``{"prompt", "completion", "source_line"}``.

Each row is one of these formats, told apart by its fields (a file may mix them):

* Alpaca: ``{"instruction", "input", "output"}``; ``input`` may be missing, null or empty. The prompt is the
  instruction, followed by a blank line and the input when the input is not blank; the completion is the
  output.
* LIMA: ``{"conversations": [user, assistant, ...]}``, the turns as strings; the first user turn and the
  assistant's reply are taken, later turns dropped. Turns given as objects (ShareGPT's ``{"from", "value"}``
  or ``{"role", "content"}``) are read too: the first user (``human``) turn and the assistant (``gpt``)
  turn right after it.
* ``{"prompt", "completion"}`` or ``{"prompt", "response"}``.

The file is a JSON list of such objects (how Alpaca ships) when its first character is ``[``, else JSONL (one
object per line), whatever its suffix. Texts are kept exactly as written; ``source_line`` is the line the
row starts on. The whole file is read and checked before anything is returned: every problem is one
``HeredityError`` naming the file, the line and the fix (a missing file, bytes that are not UTF-8, a line or
list that is not JSON, a row that is not an object, a missing, non-text or empty prompt or completion, no
rows at all).
"""

from __future__ import annotations

import json
import re
from pathlib import Path

from heredity.data.io import _kind, decode_text, jsonl_rows, read_source
from heredity.errors import HeredityError

WHAT = "instruction file"
FORMATS = (
    'Alpaca {"instruction": "...", "input": "", "output": "..."}, LIMA {"conversations": ["<user>", '
    '"<assistant>"]}, or {"prompt": "...", "completion": "..."} (or "response")'
)
EXAMPLES = {  # a row's format -> how to name it, and an example of it
    "alpaca": ("an Alpaca row", '{"instruction": "...", "input": "", "output": "..."}'),
    "prompt": ("a prompt row", '{"prompt": "...", "completion": "..."}'),
}
USER_ROLES, ASSISTANT_ROLES = ("user", "human"), ("assistant", "gpt")
JSON_SPACE = re.compile(r"[ \t\n\r]*")


def _text(row: dict, key: str, where: str, fmt: str, optional: bool = False) -> str:
    """``row[key]`` if it is non-blank text (``optional``: missing, null or blank gives "")."""
    v = row.get(key)
    if v is None:
        if optional:
            return ""
        name, example = EXAMPLES[fmt]
        raise HeredityError(f"{where}: {key!r} is missing; {name} needs it, like {example}")
    if not isinstance(v, str):
        raise HeredityError(f"{where}: {key!r} is {_kind(v)}, not text; write it as a JSON string")
    if not v.strip() and not optional:
        raise HeredityError(f"{where}: {key!r} is empty; give it some text or drop the row")
    return v


def _turn(t, i: int, where: str) -> tuple[str | None, str]:
    """(role or None, text) of turn ``i`` (1-based) of a conversation."""
    if isinstance(t, dict):
        role = t.get("from", t.get("role"))
        text = t.get("value", t.get("content"))
    else:
        role, text = None, t
    if not isinstance(text, str):
        got = "missing" if text is None else f"{_kind(text)}, not text"
        raise HeredityError(
            f"{where}: 'conversations' turn {i} is {got}; write each turn as a string (LIMA) or as "
            '{"from": "human", "value": "..."}'
        )
    return (role.lower() if isinstance(role, str) else None), text


def _conversation(row: dict, where: str) -> tuple[str, str]:
    """The first user turn of ``row["conversations"]`` and the assistant turn after it."""
    conv = row["conversations"]
    if not isinstance(conv, list):
        raise HeredityError(
            f"{where}: 'conversations' is {_kind(conv) or 'null'}, not a list; write the turns as a list "
            '["<user>", "<assistant>", ...]'
        )
    if len(conv) < 2:
        raise HeredityError(
            f"{where}: 'conversations' holds {len(conv)} turn(s); give a user turn and the assistant's reply"
        )
    turns = [_turn(t, i, where) for i, t in enumerate(conv, 1)]
    if all(role is None for role, _ in turns):
        at = 0
    else:
        at = next(
            (
                i
                for i in range(len(turns) - 1)
                if turns[i][0] in USER_ROLES and turns[i + 1][0] in ASSISTANT_ROLES
            ),
            None,
        )
        if at is None:
            raise HeredityError(
                f"{where}: 'conversations' has no user turn followed by an assistant turn; mark them "
                '"from": "human" then "gpt" (or "role": "user" then "assistant")'
            )
    for i, who in ((at, "user"), (at + 1, "assistant")):
        if not turns[i][1].strip():
            raise HeredityError(
                f"{where}: 'conversations' turn {i + 1} (the {who}'s) is empty; give it some text or drop "
                "the row"
            )
    return turns[at][1], turns[at + 1][1]


def _row(obj, path: Path, line: int) -> dict:
    """The row ``{"prompt", "completion", "source_line"}`` of the object starting on ``line``."""
    where = f"{WHAT} {path}:{line}"
    if not isinstance(obj, dict):
        raise HeredityError(
            f"{where}: {_kind(obj) or 'null'} where a JSON object belongs; write rows as {FORMATS}"
        )
    if "conversations" in obj:
        prompt, completion = _conversation(obj, where)
    elif "instruction" in obj:
        prompt = _text(obj, "instruction", where, "alpaca")
        extra = _text(obj, "input", where, "alpaca", optional=True)
        completion = _text(obj, "output", where, "alpaca")
        if extra.strip():
            prompt = f"{prompt}\n\n{extra}"
    elif "prompt" in obj:
        prompt = _text(obj, "prompt", where, "prompt")
        if obj.get("completion") is None and obj.get("response") is None:
            raise HeredityError(
                f"{where}: 'completion' is missing; a prompt row needs 'completion' (or 'response'), like "
                f"{EXAMPLES['prompt'][1]}"
            )
        completion = _text(
            obj, "completion" if obj.get("completion") is not None else "response", where, "prompt"
        )
    else:
        fields = ", ".join(repr(k) for k in obj) or "none"
        raise HeredityError(
            f"{where}: no 'instruction', 'conversations' or 'prompt' field (it has {fields}); write rows as "
            f"{FORMATS}"
        )
    return {"prompt": prompt, "completion": completion, "source_line": line}


def _json_list(path: Path, text: str) -> list[tuple[int, object]]:
    """(line the item starts on, item) for every item of the JSON list ``text``."""
    try:
        items = json.loads(text)
    except json.JSONDecodeError as e:
        raise HeredityError(
            f"{WHAT} {path}:{e.lineno}: not JSON ({e.msg}, column {e.colno}); fix the JSON list "
            "[{...}, ...] or write one object per line (JSONL)"
        ) from None
    except RecursionError:
        raise HeredityError(f"{WHAT} {path}: nested too deeply to read; flatten the rows") from None
    # json gives no positions of the items: walk the (valid) list with raw_decode to find where each starts
    decoder, out = json.JSONDecoder(), []
    pos = JSON_SPACE.match(text, text.index("[") + 1).end()
    line, counted = 1, 0
    for item in items:
        if text[pos] == ",":
            pos = JSON_SPACE.match(text, pos + 1).end()
        line += text.count("\n", counted, pos)
        counted = pos
        out.append((line, item))
        pos = JSON_SPACE.match(text, decoder.raw_decode(text, pos)[1]).end()
    return out


def _one_object(text: str) -> bool:
    """Whether ``text`` is a single JSON object spread over several lines (a JSON file, not JSONL)."""
    try:
        return isinstance(json.loads(text), dict)
    except (ValueError, RecursionError):
        return False


def read_instructions(path: str | Path) -> list[dict]:
    """The rows ``{"prompt", "completion", "source_line"}`` of the instruction file ``path`` (Alpaca, LIMA
    or prompt/completion rows, as a JSON list or JSONL), in file order, every row checked; any problem is a
    one-line ``HeredityError`` naming the file, the line and the fix."""
    src = read_source(path, WHAT, f"give a JSON list or a JSONL file of rows: {FORMATS}")
    text = decode_text(src, WHAT)
    if not text.strip():
        raise HeredityError(
            f"{WHAT} {src.path} is empty; write a JSON list or one JSON object per line: {FORMATS}"
        )
    if text.lstrip().startswith("["):
        items = _json_list(src.path, text)
    else:
        try:
            items = list(jsonl_rows(src, WHAT))
        except HeredityError:
            if _one_object(text):
                raise HeredityError(
                    f"{WHAT} {src.path}: one JSON object spread over several lines; write a JSON list "
                    "[{...}, ...] or one object per line (JSONL)"
                ) from None
            raise
    rows = [_row(obj, src.path, line) for line, obj in items]
    if not rows:
        raise HeredityError(f"{WHAT} {src.path} has no rows; give at least one: {FORMATS}")
    return rows
