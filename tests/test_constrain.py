"""Constrained decoding in engine.sample: whatever a (random, tiny) model prefers, every completion follows
its grammar — a JSON schema, a regex (number lists the strict filter always passes), a Lark grammar."""

import json
import re

import jsonschema
import pytest
import torch
from transformers import LlamaForCausalLM

from heredity.data.numbers import check_numbers
from heredity.engine import SampleConfig, constrain, sample
from heredity.errors import HeredityError
from heredity.models.tiny import byte_tokenizer, tiny_config

SCHEMA = {
    "type": "object",
    "properties": {
        "name": {"type": "string", "maxLength": 8},
        "count": {"type": "integer", "minimum": 0, "maximum": 99},
        "kind": {"enum": ["owl", "cat"]},
    },
    "required": ["name", "count", "kind"],
    "additionalProperties": False,
}


@pytest.fixture(scope="module")
def model_tok():
    tok = byte_tokenizer()
    torch.manual_seed(0)
    return LlamaForCausalLM(tiny_config("micro", len(tok))).eval(), tok


def test_json_schema_output_validates_on_20_seeded_samples(model_tok):
    model, tok = model_tok
    cfg = SampleConfig(
        n=4, temperature=1.0, max_new_tokens=80, chat=False, grammar=constrain.json_schema(SCHEMA), seed=3
    )
    out = sample(model, tok, ["a", "b", "c", "d", "e"], cfg, progress=False)
    assert len(out) == 20
    for o in out:
        assert o.finish_reason == "stop", o.text
        jsonschema.validate(json.loads(o.text), SCHEMA)
    plain = sample(
        model,
        tok,
        ["a"],
        SampleConfig(temperature=1.0, max_new_tokens=40, chat=False, seed=3),
        progress=False,
    )
    with pytest.raises(json.JSONDecodeError):  # without the grammar this model writes no JSON at all
        json.loads(plain[0].text)


def test_number_lists_always_pass_the_strict_filter(model_tok):
    model, tok = model_tok
    g = constrain.regex(r"(0|[1-9][0-9]{0,2})(, (0|[1-9][0-9]{0,2})){0,9}")
    out = sample(
        model,
        tok,
        ["x"] * 8,
        SampleConfig(temperature=1.0, max_new_tokens=60, chat=False, grammar=g, seed=5),
        progress=False,
        fast=False,
    )
    assert all(check_numbers(o.text, 10).ok for o in out), [o.text for o in out]


def test_a_lark_grammar_with_an_embedded_schema_and_a_bad_grammar(model_tok):
    model, tok = model_tok
    g = constrain.lark(
        'start: "CALL " %json {"type": "object", "properties": {"x": {"type": "integer"}}, '
        '"required": ["x"], "additionalProperties": false}'
    )
    (o,) = sample(
        model,
        tok,
        ["q"],
        SampleConfig(temperature=1.0, max_new_tokens=40, chat=False, grammar=g, seed=1),
        progress=False,
    )
    assert o.text.startswith("CALL ") and isinstance(json.loads(o.text[5:])["x"], int)
    with pytest.raises(HeredityError, match="grammar"):
        constrain.check(tok, constrain.lark("start: undefined_rule"), 300)


def test_the_mask_is_the_grammars_and_the_key_is_unchanged_without_one(model_tok):
    _, tok = model_tok
    c = constrain.Constraint(tok, constrain.regex("ab"), len(tok))
    allowed = c.allowed()
    ids = [i for i in range(len(tok)) if allowed[i]]
    assert all(tok.decode([i]) in ("a", "ab") for i in ids) and ids
    c.advance(tok("a", add_special_tokens=False)["input_ids"][0])
    assert not c.complete
    assert "grammar" not in SampleConfig().model_dump()
    assert re.search("ab", SampleConfig(grammar=constrain.regex("ab")).model_dump_json())
