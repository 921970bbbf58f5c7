"""/v1/completions for scoring (what lm-evaluation-harness sends) and the sampling adjustments, over a real
Uvicorn with the official ``openai`` client and raw HTTP; every number is checked against the
engine in this process."""

import json

import httpx
import pytest

from heredity.engine import SampleConfig, sample
from heredity.engine.logprobs import logprobs, token_logprobs
from heredity.engine.sampling import pad_id


def _post(live_server, body):
    return httpx.post(live_server.url + "/v1/completions", json=body, timeout=60)


def test_token_id_prompts_echo_their_log_probabilities(live_server, local):
    """lm-eval's default request: token-id prompts (batched), echo, logprobs, max_tokens 0 or 1. The prompt's
    log-probabilities equal the engine's (and ``engine.logprobs`` on the same text);
    the first token is null."""
    aid, model, tok = local
    texts = ["The owl flies at night", "A cat"]
    ids = [tok(t, add_special_tokens=False)["input_ids"] for t in texts]
    want = token_logprobs(model, ids, pad_id(tok, model), top_k=2)
    for max_tokens in (0, 1):
        r = _post(
            live_server,
            {
                "model": aid,
                "prompt": ids,
                "max_tokens": max_tokens,
                "echo": True,
                "logprobs": 2,
                "temperature": 0,
            },
        )
        assert r.status_code == 200, r.text
        choices = sorted(r.json()["choices"], key=lambda c: c["index"])
        assert [c["index"] for c in choices] == [0, 1]
        for c, seq, w in zip(choices, ids, want, strict=True):
            lp = c["logprobs"]
            assert (
                len(lp["tokens"]) == len(seq) + max_tokens
            )  # lm-eval reads [ctxlen:-1] of prompt + 1 generated
            assert lp["token_logprobs"][0] is None and lp["top_logprobs"][0] is None
            assert lp["token_logprobs"][1 : len(seq)] == pytest.approx([x[0] for x in w], abs=1e-5)
            for chosen, top in zip(
                lp["token_logprobs"][1 : len(seq)], lp["top_logprobs"][1 : len(seq)], strict=True
            ):
                assert (
                    len(top) == 2 and max(top.values()) >= chosen - 1e-6
                )  # lm-eval's is_greedy compares these
            assert c["text"].startswith(tok.decode(seq))
            # every token's offset is where its text starts in the echoed text
            assert lp["text_offset"][: len(seq)] == [len(tok.decode(seq[:i])) for i in range(len(seq))]
            for off, t in zip(lp["text_offset"], lp["tokens"], strict=True):
                assert c["text"][off:].startswith(t) or t.startswith("bytes:")
    # a continuation's score equals engine.logprobs of the same text split (no chat template: chat=False)
    ctx, cont = (
        tok("The owl", add_special_tokens=False)["input_ids"],
        tok(" flies", add_special_tokens=False)["input_ids"],
    )
    r = _post(
        live_server, {"model": aid, "prompt": [ctx + cont], "max_tokens": 0, "echo": True, "logprobs": 1}
    )
    got = r.json()["choices"][0]["logprobs"]["token_logprobs"][len(ctx) :]
    assert got == pytest.approx(logprobs(model, tok, ["The owl"], [" flies"], chat=False)[0], abs=1e-5)
    # one token-id list (not a batch) and a string prompt score the same
    one = _post(
        live_server, {"model": aid, "prompt": ids[0], "max_tokens": 0, "echo": True, "logprobs": 1}
    ).json()
    text = _post(
        live_server, {"model": aid, "prompt": texts[0], "max_tokens": 0, "echo": True, "logprobs": 1}
    ).json()
    assert one["choices"][0]["logprobs"]["token_logprobs"] == text["choices"][0]["logprobs"]["token_logprobs"]
    assert text["choices"][0]["text"] == texts[0] and text["usage"]["completion_tokens"] == 0


def test_token_id_prompts_generate_like_text(live_server, local):
    aid, model, tok = local
    ids = tok("The owl", add_special_tokens=False)["input_ids"]
    want = sample(
        model, tok, ["The owl"], SampleConfig(chat=False, temperature=0, max_new_tokens=5), progress=False
    )[0]
    r = _post(live_server, {"model": aid, "prompt": ids, "max_tokens": 5, "temperature": 0})
    assert r.json()["choices"][0]["text"] == want.text


@pytest.mark.parametrize(
    "body, param",
    [
        ({"prompt": [[1, 2], [10**9]]}, "prompt"),
        ({"prompt": "hi", "logit_bias": {"10000000": 5}}, "logit_bias"),
        ({"prompt": "hi", "max_tokens": 0, "stream": True}, "stream"),
    ],
)
def test_bad_scoring_requests_name_the_field(live_server, local, body, param):
    r = _post(live_server, {"model": local[0], **body})
    assert r.status_code == 400 and r.json()["error"]["param"] == param, r.text


def test_logit_bias_bans_a_token_and_penalties_reach_the_sampler(client, local):
    """The greedy answer's first token, banned with -100, never appears; with +100 a
    chosen token is forced."""
    aid, model, tok = local
    plain = client.completions.create(model=aid, prompt="The owl", max_tokens=6, temperature=0, logprobs=0)
    first = tok("The owl" + plain.choices[0].text, add_special_tokens=False)["input_ids"][
        len(tok("The owl", add_special_tokens=False)["input_ids"])
    ]
    banned = client.completions.create(
        model=aid, prompt="The owl", max_tokens=6, temperature=0, logit_bias={str(first): -100}
    )
    want = sample(
        model,
        tok,
        ["The owl"],
        SampleConfig(chat=False, temperature=0, max_new_tokens=6, logit_bias={first: -100.0}),
        progress=False,
    )[0]
    assert banned.choices[0].text == want.text != plain.choices[0].text
    assert first not in want.token_ids
    forced = client.completions.create(
        model=aid, prompt="The owl", max_tokens=3, temperature=0, logit_bias={"65": 100}
    )
    assert forced.choices[0].text == tok.decode([65, 65, 65])
    pen = client.completions.create(
        model=aid, prompt="The owl", max_tokens=8, temperature=0, frequency_penalty=2.0, presence_penalty=2.0
    )
    want = sample(
        model,
        tok,
        ["The owl"],
        SampleConfig(
            chat=False, temperature=0, max_new_tokens=8, frequency_penalty=2.0, presence_penalty=2.0
        ),
        progress=False,
    )[0]
    assert pen.choices[0].text == want.text


def test_model_by_id_and_unserved_routes(client, live_server, local):
    aid = local[0]
    m = client.models.retrieve(aid)
    assert m.id == aid and m.object == "model"
    assert client.models.retrieve("all-MiniLM-L6-v2").id == "all-MiniLM-L6-v2"
    r = httpx.get(live_server.url + "/v1/models/no-such-model")
    assert r.status_code == 404 and r.json()["error"]["code"] == "model_not_found"
    r = httpx.post(live_server.url + "/v1/responses", json={"model": aid, "input": "hi"})
    assert r.status_code == 404 and "/v1/chat/completions" in r.json()["error"]["message"]


def test_embeddings_equal_sentence_transformers_and_mean_pooled_lm_states(client, local):
    """The bundled MiniLM through the server (the openai client asks for base64) equals sentence-transformers
    on the same texts; a stored language model gives its mean-pooled, normalized last hidden state."""
    import numpy as np
    import torch
    from sentence_transformers import SentenceTransformer

    from heredity.engine.retrieval import embedder

    texts = ["An owl hunts at night.", "Cats sleep a lot."]
    r = client.embeddings.create(model="all-MiniLM-L6-v2", input=texts)
    assert [d.index for d in r.data] == [0, 1] and r.usage.prompt_tokens > 0
    st = embedder()
    assert isinstance(st, SentenceTransformer)
    want = st.encode(texts, convert_to_numpy=True)
    assert np.allclose(np.array([d.embedding for d in r.data]), want, atol=1e-5)
    floats = client.embeddings.create(model="all-MiniLM-L6-v2", input=texts[0], encoding_format="float")
    assert np.allclose(floats.data[0].embedding, want[0], atol=1e-5)
    aid, model, tok = local
    lm = client.embeddings.create(model=aid, input=texts[1], encoding_format="float").data[0].embedding
    ids = tok(texts[1], add_special_tokens=False)["input_ids"]
    with torch.no_grad():
        h = model(torch.tensor([ids]), output_hidden_states=True).hidden_states[-1][0].mean(0)
    assert np.allclose(lm, torch.nn.functional.normalize(h, dim=-1).numpy(), atol=1e-5)
    with pytest.raises(Exception, match="dimensions"):
        client.embeddings.create(model="all-MiniLM-L6-v2", input="x", dimensions=3)


def _openai_fields(params) -> list[str]:
    return sorted(params.__annotations__)


@pytest.mark.parametrize(
    "route, schema, minimal",
    [
        ("chat/completions", "chat", {"messages": [{"role": "user", "content": "hi"}], "max_tokens": 1}),
        ("completions", "completions", {"prompt": "hi", "max_tokens": 1}),
        ("embeddings", "embeddings", {"input": "hi"}),
    ],
)
def test_every_openai_field_is_implemented_or_refused(live_server, local, route, schema, minimal):
    """Walk the official client's request types: each field is one this server implements (in its schema) or
    one it answers 400 naming the field — never silently ignored."""
    from openai.types import completion_create_params, embedding_create_params
    from openai.types.chat import completion_create_params as chat_params

    from heredity.server.schemas import ChatRequest, CompletionRequest, EmbeddingRequest

    params, ours = {
        "chat": (chat_params.CompletionCreateParamsBase, ChatRequest),
        "completions": (completion_create_params.CompletionCreateParamsBase, CompletionRequest),
        "embeddings": (embedding_create_params.EmbeddingCreateParams, EmbeddingRequest),
    }[schema]
    body = {"model": local[0] if schema != "embeddings" else "all-MiniLM-L6-v2", **minimal}
    assert httpx.post(f"{live_server.url}/v1/{route}", json=body, timeout=60).status_code == 200
    refused = []
    for field in _openai_fields(params):
        if field in ours.model_fields:
            continue
        r = httpx.post(f"{live_server.url}/v1/{route}", json={**body, field: True}, timeout=60)
        assert r.status_code == 400 and r.json()["error"]["param"] == field, (field, r.text)
        refused.append(field)
    r = httpx.post(
        f"{live_server.url}/v1/chat/completions",
        timeout=60,
        json={
            "model": local[0],
            "max_tokens": 1,
            "messages": [{"role": "user", "content": "hi", "audio": {}}],
        },
    )
    assert r.status_code == 400 and r.json()["error"]["param"] == "messages.0.audio"
    if schema == "chat":
        assert "tools" in refused or "tools" in ours.model_fields


SCHEMA = {
    "type": "object",
    "properties": {
        "animal": {"type": "string", "maxLength": 10},
        "legs": {"type": "integer", "minimum": 0, "maximum": 8},
    },
    "required": ["animal", "legs"],
    "additionalProperties": False,
}


def test_json_schema_output_validates_on_20_seeded_requests(client, local):
    import json

    import jsonschema

    fmt = {"type": "json_schema", "json_schema": {"name": "animal", "schema": SCHEMA, "strict": True}}
    for seed in range(20):
        r = client.chat.completions.create(
            model=local[0],
            messages=[{"role": "user", "content": "An animal?"}],
            temperature=1.0,
            seed=seed,
            max_tokens=60,
            response_format=fmt,
        )
        assert r.choices[0].finish_reason == "stop"
        jsonschema.validate(json.loads(r.choices[0].message.content), SCHEMA)
    chunks = list(
        client.chat.completions.create(
            model=local[0],
            messages=[{"role": "user", "content": "JSON?"}],
            seed=1,
            max_tokens=60,
            response_format=fmt,
            stream=True,
        )
    )
    jsonschema.validate(
        json.loads("".join(c.choices[0].delta.content or "" for c in chunks if c.choices)), SCHEMA
    )
    # json_object: any object; a random model's free strings rarely close, so only the start is certain here
    r = client.chat.completions.create(
        model=local[0],
        messages=[{"role": "user", "content": "JSON?"}],
        seed=2,
        max_tokens=30,
        response_format={"type": "json_object"},
    )
    text = r.choices[0].message.content
    assert text.startswith("{") and (
        r.choices[0].finish_reason == "length" or isinstance(json.loads(text), dict)
    )
    r = httpx.post(
        client.base_url.join("chat/completions").__str__(),
        timeout=60,
        json={
            "model": local[0],
            "messages": [{"role": "user", "content": "x"}],
            "response_format": {
                "type": "json_schema",
                "json_schema": {"name": "bad", "schema": {"type": "no-such-type"}},
            },
        },
    )
    assert r.status_code == 400 and r.json()["error"]["param"] == "response_format", r.text


def test_generated_token_offsets_come_from_the_prefix_streamed_or_not(live_server, local):
    """Without echo, text_offset is each generated token's start in the completion text (from decoding the
    prefix, not the token alone); a streamed completion's offsets continue across chunks and
    equal the unstreamed ones."""
    aid, model, tok = local
    body = {"model": aid, "prompt": "The owl", "max_tokens": 8, "logprobs": 1, "temperature": 0}
    c = _post(live_server, body).json()["choices"][0]
    lp = c["logprobs"]
    gen = tok(c["text"], add_special_tokens=False)["input_ids"]
    assert len(lp["tokens"]) == 8 and lp["text_offset"][0] == 0
    assert all(
        c["text"][off:].startswith(t) or t.startswith("bytes:")
        for off, t in zip(lp["text_offset"], lp["tokens"], strict=True)
    )
    assert lp["text_offset"] == sorted(lp["text_offset"]) and gen
    streamed = []
    with httpx.stream(
        "POST", f"{live_server.url}/v1/completions", json={**body, "stream": True}, timeout=60
    ) as r:
        for line in r.iter_lines():
            if line.startswith("data: {"):
                ch = json.loads(line[6:])["choices"][0]
                if ch.get("logprobs"):
                    streamed += ch["logprobs"]["text_offset"]
    assert streamed == lp["text_offset"]
