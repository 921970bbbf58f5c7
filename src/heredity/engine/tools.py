"""Tool calling for any chat model: render tool definitions and tool messages, parse calls back, constrain
them.

OpenAI's shapes in, OpenAI's shapes out. A model whose chat template renders ``tools`` (Qwen2.5, Llama 3.1, …)
gets them through its template; any other (SmolLM2) gets the **generic format** below, appended to the system
message:

    You can call tools. To call one, answer with only
    <tool_call>{"name": "<tool name>", "arguments": {<the arguments, as JSON>}}</tool_call>
    (one such line per call). The tools, as JSON schemas of their arguments:
    {"name": "get_weather", "description": "...", "parameters": {...}}

An assistant turn that called tools is rendered back as those ``<tool_call>`` lines; a ``tool`` message as a
user turn ``<tool_response>{"name": ..., "content": ...}</tool_response>`` (templates that know tools render
them their own way). ``parse_calls`` reads ``<tool_call>`` blocks out of a completion (the Hermes format,
which tool-aware templates such as Qwen2.5's also use). ``call_grammar`` is the llguidance grammar that forces
one call (or several, with ``parallel``) to one of the given tools — or to one named tool — with arguments
that validate against its schema: with ``tool_choice`` "required" or a named function, constrained decoding
guarantees a valid call whatever the model's skill. What this module does not know: HTTP, or how sampling
applies a grammar.
"""

from __future__ import annotations

import json
import re
import uuid

from heredity.errors import HeredityError

OPEN, CLOSE = "<tool_call>", "</tool_call>"
HEADER = (
    "You can call tools. To call one, answer with only\n"
    '<tool_call>{"name": "<tool name>", "arguments": {<the arguments, as JSON>}}</tool_call>\n'
    "(one such line per call). The tools, as JSON schemas of their arguments:"
)
_CALL = re.compile(re.escape(OPEN) + r"\s*(\{.*?\})\s*" + re.escape(CLOSE), re.DOTALL)


def template_knows_tools(tokenizer) -> bool:
    return "tools" in (getattr(tokenizer, "chat_template", None) or "")


def _function(tool: dict) -> dict:
    if tool.get("type", "function") != "function" or "function" not in tool:
        raise HeredityError(f"only function tools are supported; got {tool.get('type')!r}")
    f = tool["function"]
    return {
        "name": f["name"],
        "description": f.get("description", ""),
        "parameters": f.get("parameters") or {"type": "object", "properties": {}},
    }


def generic_messages(messages: list[dict], tools: list[dict] | None) -> list[dict]:
    """Messages rewritten into the generic format: plain system/user/assistant turns any template can
    render."""
    out, names = [], {}
    block = None
    if tools:
        block = HEADER + "\n" + "\n".join(json.dumps(_function(t)) for t in tools)
    for m in messages:
        role, content = m["role"], m.get("content") or ""
        if role == "assistant" and m.get("tool_calls"):
            lines = []
            for c in m["tool_calls"]:
                f = c["function"]
                names[c.get("id")] = f["name"]
                args = f.get("arguments") or "{}"
                lines.append(
                    OPEN
                    + json.dumps(
                        {"name": f["name"], "arguments": json.loads(args) if isinstance(args, str) else args}
                    )
                    + CLOSE
                )
            out.append(
                {"role": "assistant", "content": (content + "\n" if content else "") + "\n".join(lines)}
            )
        elif role == "tool":
            name = names.get(m.get("tool_call_id"), m.get("name") or "")
            out.append(
                {
                    "role": "user",
                    "content": "<tool_response>"
                    + json.dumps({"name": name, "content": content})
                    + "</tool_response>",
                }
            )
        else:
            out.append({"role": role, "content": content})
    if block:
        if out and out[0]["role"] == "system":
            out[0] = {"role": "system", "content": out[0]["content"] + "\n\n" + block}
        else:
            out.insert(0, {"role": "system", "content": block})
    return out


def render(tokenizer, messages: list[dict], tools: list[dict] | None) -> str:
    """The prompt text: the template's own tool rendering when it has one, else the generic format."""
    if tools and template_knows_tools(tokenizer):
        msgs = []
        for m in messages:  # templates take arguments as objects
            if m.get("tool_calls"):
                calls = [
                    {
                        **c,
                        "function": {
                            **c["function"],
                            "arguments": json.loads(c["function"].get("arguments") or "{}"),
                        },
                    }
                    for c in m["tool_calls"]
                ]
                m = {**m, "tool_calls": calls}
            msgs.append(m)
        return tokenizer.apply_chat_template(msgs, tools=tools, tokenize=False, add_generation_prompt=True)
    return tokenizer.apply_chat_template(
        generic_messages(messages, tools), tokenize=False, add_generation_prompt=True
    )


def parse_calls(text: str, tools: list[dict]) -> tuple[str | None, list[dict]]:
    """(content before the first call, or None; OpenAI ``tool_calls``) from a completion. A block whose JSON
    does not parse, or names no given tool, stays text."""
    known = {_function(t)["name"] for t in tools}
    calls, first = [], None
    for m in _CALL.finditer(text):
        try:
            obj = json.loads(m.group(1))
        except json.JSONDecodeError:
            continue
        if not isinstance(obj, dict) or obj.get("name") not in known:
            continue
        first = m.start() if first is None else first
        calls.append(
            {
                "id": f"call_{uuid.uuid4().hex[:24]}",
                "type": "function",
                "function": {"name": obj["name"], "arguments": json.dumps(obj.get("arguments", {}))},
            }
        )
    if not calls:
        return text, []
    content = text[:first].strip()
    return (content or None), calls


def call_grammar(tools: list[dict], name: str | None = None, parallel: bool = False) -> str:
    """The grammar of one tool call (``parallel``: one to four, a newline apart) to one of ``tools`` (or to
    the one called ``name``) whose arguments validate against that tool's parameters schema."""
    from heredity.engine import constrain

    fns = [_function(t) for t in tools]
    if name is not None:
        fns = [f for f in fns if f["name"] == name]
        if not fns:
            raise HeredityError(f"tool_choice names {name!r}, which is not among the tools")
    schemas = [
        {
            "type": "object",
            "properties": {"name": {"const": f["name"]}, "arguments": f["parameters"]},
            "required": ["name", "arguments"],
            "additionalProperties": False,
        }
        for f in fns
    ]
    schema = dict(schemas[0]) if len(schemas) == 1 else {"anyOf": schemas}
    schema["x-guidance"] = {
        "whitespace_flexible": False,
        "item_separator": ", ",
        "key_separator": ": ",
    }  # json.dumps' layout
    more = ' ("\\n" call)~0..3' if parallel else ""
    return constrain.lark(f'start: call{more}\ncall: "{OPEN}" %json {json.dumps(schema)} "{CLOSE}"')
