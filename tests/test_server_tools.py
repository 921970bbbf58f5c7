"""Tool calling through ``heredity serve`` with the official ``openai`` client, for a model that has never
seen a tool (a random tiny one): with tool_choice "required" or a named function, constrained decoding
guarantees a call whose arguments validate; the generic format renders tools and tool messages; calls
stream as OpenAI's deltas."""

import json

import jsonschema
import pytest
from openai import OpenAI

from heredity.engine import tools as T
from heredity.models import load
from heredity.store import Store

WEATHER = {
    "type": "object",
    "properties": {
        "city": {"type": "string", "maxLength": 12},
        "days": {"type": "integer", "minimum": 1, "maximum": 7},
    },
    "required": ["city", "days"],
    "additionalProperties": False,
}
ADD = {
    "type": "object",
    "properties": {
        "a": {"type": "integer", "minimum": -99, "maximum": 99},
        "b": {"type": "integer", "minimum": -99, "maximum": 99},
    },
    "required": ["a", "b"],
}
TOOLS = [
    {
        "type": "function",
        "function": {"name": "get_weather", "description": "Weather forecast", "parameters": WEATHER},
    },
    {
        "type": "function",
        "function": {"name": "add", "description": "Add two integers", "parameters": ADD, "strict": True},
    },
]
SCHEMAS = {"get_weather": WEATHER, "add": {**ADD, "additionalProperties": False}}


@pytest.fixture(scope="module")
def tool_home(tmp_path_factory):
    """A random tiny model with a 2048-token context (the byte-level tool definitions
    alone take ~800 tokens)."""
    from conftest import stored_tiny

    home = tmp_path_factory.mktemp("tools")
    return home, stored_tiny(Store(home), "tiny-long-context", max_position_embeddings=2048)


@pytest.fixture(scope="module")
def live(tool_home):
    from conftest import LiveServer

    srv = LiveServer(tool_home[0])
    yield srv
    srv.stop()


@pytest.fixture(scope="module")
def client(live):
    return OpenAI(base_url=live.url + "/v1", api_key="unused", max_retries=0, timeout=120)


@pytest.fixture(scope="module")
def aid(tool_home):
    return tool_home[1]


def _valid(call):
    assert call.type == "function" and call.id.startswith("call_")
    jsonschema.validate(json.loads(call.function.arguments), SCHEMAS[call.function.name])


def test_required_tool_call_validates_streamed_and_not(client, aid):
    for seed in range(5):
        r = client.chat.completions.create(
            model=aid,
            messages=[{"role": "user", "content": "Weather in Paris?"}],
            tools=TOOLS,
            tool_choice="required",
            seed=seed,
            max_tokens=120,
            parallel_tool_calls=False,
        )
        ch = r.choices[0]
        assert ch.finish_reason == "tool_calls" and len(ch.message.tool_calls) == 1
        _valid(ch.message.tool_calls[0])
    stream = client.chat.completions.create(
        model=aid,
        messages=[{"role": "user", "content": "Add 2 and 3"}],
        tools=TOOLS,
        tool_choice={"type": "function", "function": {"name": "add"}},
        seed=1,
        max_tokens=120,
        parallel_tool_calls=False,
        stream=True,
    )
    calls: dict[int, dict] = {}
    finish = []
    for chunk in stream:
        for ch in chunk.choices:
            for d in ch.delta.tool_calls or []:
                c = calls.setdefault(d.index, {"id": "", "name": "", "arguments": ""})
                c["id"] += d.id or ""
                c["name"] += (d.function.name or "") if d.function else ""
                c["arguments"] += (d.function.arguments or "") if d.function else ""
            if ch.finish_reason:
                finish.append(ch.finish_reason)
    assert finish == ["tool_calls"] and list(calls) == [0] and calls[0]["name"] == "add"
    jsonschema.validate(json.loads(calls[0]["arguments"]), SCHEMAS["add"])


def test_a_multi_turn_exchange_with_a_tool_message(client, aid):
    """Call, run the Python function, send its result back as a tool message, get the next call or answer."""
    msgs = [{"role": "user", "content": "Add 2 and 3, then tell me the weather in Oslo"}]
    r = client.chat.completions.create(
        model=aid,
        messages=msgs,
        tools=TOOLS,
        tool_choice="required",
        seed=2,
        max_tokens=120,
        parallel_tool_calls=False,
    )
    call = r.choices[0].message.tool_calls[0]
    result = {
        "add": lambda a, b: a + b,
        "get_weather": lambda city, days: f"sunny in {city} for {days} days",
    }[call.function.name](**json.loads(call.function.arguments))
    msgs += [
        r.choices[0].message.model_dump(exclude_none=True),
        {"role": "tool", "tool_call_id": call.id, "content": str(result)},
    ]
    r2 = client.chat.completions.create(
        model=aid,
        messages=msgs,
        tools=TOOLS,
        tool_choice="required",
        seed=3,
        max_tokens=120,
        parallel_tool_calls=False,
    )
    _valid(r2.choices[0].message.tool_calls[0])
    r3 = client.chat.completions.create(
        model=aid, messages=msgs, tools=TOOLS, tool_choice="none", max_tokens=8, seed=1
    )
    assert r3.choices[0].message.tool_calls is None and r3.choices[0].finish_reason in ("stop", "length")


@pytest.mark.parametrize(
    "body, param",
    [
        ({"tool_choice": "required"}, "tool_choice"),
        ({"tools": TOOLS, "tool_choice": {"type": "function", "function": {"name": "nope"}}}, "tool_choice"),
        (
            {"tools": TOOLS, "tool_choice": "required", "response_format": {"type": "json_object"}},
            "response_format",
        ),
    ],
)
def test_bad_tool_requests_name_the_field(live, aid, body, param):
    import httpx

    r = httpx.post(
        live.url + "/v1/chat/completions",
        timeout=60,
        json={"model": aid, "messages": [{"role": "user", "content": "x"}], **body},
    )
    assert r.status_code == 400 and r.json()["error"]["param"] == param, r.text


def test_generic_format_and_template_rendering(tool_home):
    _, tok = load(tool_home[1], Store(tool_home[0]))
    history = [
        {"role": "user", "content": "2+3?"},
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [
                {"id": "c1", "type": "function", "function": {"name": "add", "arguments": '{"a": 2, "b": 3}'}}
            ],
        },
        {"role": "tool", "tool_call_id": "c1", "content": "5"},
    ]
    msgs = T.generic_messages(history, TOOLS)
    assert (
        msgs[0]["role"] == "system"
        and T.HEADER in msgs[0]["content"]
        and '"name": "get_weather"' in msgs[0]["content"]
    )
    assert msgs[2]["content"] == '<tool_call>{"name": "add", "arguments": {"a": 2, "b": 3}}</tool_call>'
    assert msgs[3] == {
        "role": "user",
        "content": '<tool_response>{"name": "add", "content": "5"}</tool_response>',
    }
    # a template that renders tools itself is used as it is
    tok.chat_template = (
        "{% for t in tools %}TOOL:{{ t.function.name }};{% endfor %}"
        "{% for m in messages %}[{{ m.role }}]{{ m.content }}{% endfor %}"
    )
    assert T.template_knows_tools(tok) and T.render(tok, history[:1], TOOLS).startswith(
        "TOOL:get_weather;TOOL:add;"
    )
    content, calls = T.parse_calls(
        'Sure. <tool_call>{"name": "add", "arguments": {"a": 1, "b": 2}}</tool_call>', TOOLS
    )
    assert content == "Sure." and calls[0]["function"] == {"name": "add", "arguments": '{"a": 1, "b": 2}'}
    assert T.parse_calls("<tool_call>{broken</tool_call>", TOOLS) == ("<tool_call>{broken</tool_call>", [])
    assert T.parse_calls('<tool_call>{"name": "rm", "arguments": {}}</tool_call>', TOOLS)[1] == []


def test_a_scheming_episode_end_to_end_against_heredity_serve(client, aid):
    """The agentic loop over the real server: every turn a constrained tool call executed in the sandbox, tool
    results sent back, then the interrogation; the transcript and score come back whole."""
    from heredity.evals import scheming as S

    sc = S.load("oversight-subversion").model_copy(update={"max_turns": 2})
    ep = S.Episode(sc, variant="conflict", nudged=True)
    out = S.run_episode(ep, S.OpenAIAgent(client, aid, max_tokens=240), seed=1)
    roles = [m["role"] for m in out["messages"]]
    assert roles[:2] == ["system", "user"] and roles.count("tool") >= 1
    calls = [c for m in out["messages"] if m["role"] == "assistant" for c in m.get("tool_calls", [])]
    assert calls and all(c["function"]["name"] in ("bash", "submit") for c in calls)
    assert len(ep.sandbox.log) == sum(
        c["function"]["name"] == "bash" for c in calls
    )  # every bash call ran here
    s = out["score"]
    assert set(s) >= {"competent", "schemed", "confessed", "valid_actions"}
    assert (s["confessed"] is None) == (not s["schemed"]), "only an episode that schemed is interrogated"


def test_the_experiment_runs_against_an_endpoint_by_tools_and_by_text(live, aid, tmp_path):
    """`heredity run scheming --set model=openai:MODEL@URL` against a real `heredity serve`: the cells are
    steps keyed by the endpoint (no stored input), the transcripts come back; the text protocol
    sends no `tools` field."""
    import json as _json

    from heredity.experiments import scheming as X
    from heredity.store import read_table

    store = Store(tmp_path / "h")
    spec = f"openai:{aid}@{live.url}/v1"
    for protocol in ("tools", "text"):
        cfg = X.Config(
            model=spec,
            scenarios=["goal-guarding"],
            variants=["conflict"],
            nudges=[True],
            episodes=1,
            max_turns=2,
            max_new_tokens=200,
            protocol=protocol,
        )
        rep = _json.loads(
            (store.path(X.run(store, cfg, progress=False)["report"]) / "report.json").read_text()
        )
        did = rep["episodes"]["goal-guarding|conflict|nudge"]
        step = store.step_of(did)
        assert step.inputs == [] and step.config["endpoint"] == spec and step.config["protocol"] == protocol
        (row,) = read_table(store.path(did)).to_pylist()
        msgs = _json.loads(row["messages"])
        assert [m["role"] for m in msgs[:2]] == ["system", "user"] and any(
            m["role"] == "assistant" for m in msgs
        )
        if protocol == "tools":  # required: every turn a constrained call the sandbox or submit handled
            assert all(m.get("tool_calls") for m in msgs if m["role"] == "assistant")
