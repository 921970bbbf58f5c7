import pytest
import torch
from transformers import LlamaForCausalLM

from heredity.engine import SampleConfig, logprobs, sample
from heredity.models.tiny import byte_tokenizer, tiny_config

PROMPTS = ["hi", "a much longer prompt than the first one", "mid length prompt", "x" * 30, "owls"]


@pytest.fixture(scope="module")
def peaked():
    """A tiny random model with a large init, so greedy decoding has no near-ties."""
    tok = byte_tokenizer()
    cfg = tiny_config("micro", len(tok))
    cfg.initializer_range = 0.5
    torch.manual_seed(0)
    return LlamaForCausalLM(cfg).eval(), tok


def test_greedy_matches_one_by_one_generate(peaked):
    """Continuous batching (refills, fan-out to n, prefix sharing, dropped rows) must not change the math."""
    model, tok = peaked
    cfg = SampleConfig(temperature=0, max_new_tokens=12, batch_size=3, n=2, chat=True)
    got = sample(model, tok, PROMPTS, cfg, progress=False)
    assert [(c.prompt_index, c.sample_index) for c in got] == [
        (i, k) for i in range(len(PROMPTS)) for k in range(2)
    ]
    for c in got:
        text = tok.apply_chat_template(
            [{"role": "user", "content": PROMPTS[c.prompt_index]}], tokenize=False, add_generation_prompt=True
        )
        ids = torch.tensor([tok(text, add_special_tokens=False)["input_ids"]])
        ref = model.generate(
            ids,
            max_new_tokens=12,
            do_sample=False,
            eos_token_id=tok.eos_token_id,
            pad_token_id=tok.pad_token_id,
        )
        ref_ids = [t for t in ref[0, ids.shape[1] :].tolist() if t != tok.eos_token_id]
        assert c.token_ids == ref_ids, f"prompt {c.prompt_index}"


def test_seed_reproducible_and_seed_sensitive(tiny):
    _, _, model, tok = tiny
    cfg = SampleConfig(temperature=1.0, max_new_tokens=16, n=3, batch_size=4, seed=7)
    a = sample(model, tok, PROMPTS, cfg, progress=False)
    b = sample(model, tok, PROMPTS, cfg, progress=False)
    c = sample(model, tok, PROMPTS, cfg.model_copy(update={"seed": 8}), progress=False)
    assert [x.token_ids for x in a] == [x.token_ids for x in b]
    assert [x.token_ids for x in a] != [x.token_ids for x in c]


def test_per_sequence_stop_and_length(tiny):
    _, _, model, tok = tiny
    cfg = SampleConfig(temperature=1.0, max_new_tokens=40, n=4, batch_size=8, stop=["e", "a"], seed=1)
    got = sample(model, tok, PROMPTS, cfg, progress=False)
    assert all("e" not in c.text and "a" not in c.text for c in got)
    stopped = [c for c in got if c.finish_reason == "stop"]
    assert stopped and len({c.n_tokens for c in got}) > 3, "sequences must stop independently"
    assert all(c.n_tokens <= 40 for c in got)
    assert all(c.n_tokens == 40 for c in got if c.finish_reason == "length")


def test_top_p_tiny_is_greedy(peaked):
    model, tok = peaked
    greedy = sample(model, tok, PROMPTS, SampleConfig(temperature=0, max_new_tokens=8), progress=False)
    nucleus = sample(
        model,
        tok,
        PROMPTS,
        SampleConfig(temperature=1.0, top_p=1e-6, max_new_tokens=8, seed=3),
        progress=False,
    )
    assert [c.token_ids for c in greedy] == [c.token_ids for c in nucleus]


def test_context_overflow_is_clear(tiny):
    from heredity.errors import HeredityError

    _, _, model, tok = tiny
    with pytest.raises(HeredityError, match="exceeds the model's context"):
        sample(model, tok, ["x" * 300], SampleConfig(max_new_tokens=10), progress=False)


def test_logprobs_match_forward(peaked):
    model, tok = peaked
    lp = logprobs(model, tok, ["hi", "owls are"], [" there", " great birds"], chat=False)
    assert [len(x) for x in lp] == [6, 12]
    ids = torch.tensor([tok("owls are great birds")["input_ids"]])
    with torch.no_grad():
        ref = torch.log_softmax(model(ids).logits[0], -1)
    n_prompt = len(tok("owls are")["input_ids"])
    expect = [ref[n_prompt - 1 + j, ids[0, n_prompt + j]].item() for j in range(12)]
    assert lp[1] == pytest.approx(expect, abs=1e-4)


@pytest.mark.parametrize(
    "preset", ["micro", "base"]
)  # base has grouped-query attention (8 heads, 4 kv heads)
def test_fast_decode_step_matches_hf_forward(preset):
    """The lean fused decode step gives HF's logits, with left padding and a preallocated cache."""
    from heredity.engine.cache import prealloc_cache
    from heredity.engine.fastdecode import FastDecoder, supports

    tok = byte_tokenizer()
    cfg = tiny_config(preset, len(tok))
    torch.manual_seed(1)
    model = LlamaForCausalLM(cfg).eval()
    assert supports(model)
    rows = [
        tok("a short one", add_special_tokens=False)["input_ids"],
        tok("a rather longer prompt here", add_special_tokens=False)["input_ids"],
    ]
    L = max(map(len, rows))
    ids = torch.tensor([[0] * (L - len(r)) + r for r in rows])
    att = torch.tensor([[0] * (L - len(r)) + [1] * len(r) for r in rows])
    pos = (att.cumsum(-1) - 1).clamp(min=0)
    nxt = torch.tensor([5, 77])
    caches = []
    with torch.inference_mode():
        for _ in range(2):
            c = prealloc_cache(cfg.num_hidden_layers, L + 4)
            model(input_ids=ids, attention_mask=att, position_ids=pos, cache=c, use_cache=True)
            caches.append(c)
        att2 = torch.cat([att, torch.ones(2, 1, dtype=torch.long)], dim=1)
        ref = model(
            input_ids=nxt[:, None],
            attention_mask=att2,
            position_ids=pos[:, -1:] + 1,
            cache=caches[0],
            use_cache=True,
        ).logits[:, -1]
        got = FastDecoder(model).step(nxt, pos[:, -1] + 1, caches[1], L, att2)
    torch.testing.assert_close(got, ref, rtol=1e-4, atol=1e-4)
    for a, b in zip(caches[0].layers, caches[1].layers, strict=True):
        assert a.n == b.n == L + 1
        torch.testing.assert_close(a._k[:, :, : L + 1], b._k[:, :, : L + 1])


def test_fast_and_hf_paths_sample_the_same_greedy_text(peaked):
    model, tok = peaked
    cfg = SampleConfig(temperature=0, max_new_tokens=12, batch_size=3, n=1)
    fast = sample(model, tok, PROMPTS, cfg, progress=False, fast=True)
    slow = sample(model, tok, PROMPTS, cfg, progress=False, fast=False)
    assert [c.token_ids for c in fast] == [c.token_ids for c in slow]


@pytest.mark.parametrize("temperature,top_p", [(1.0, 1.0), (0.5, 1.0), (1.0, 0.7)])
def test_pick_draws_from_the_right_distribution(temperature, top_p):
    """Each row's token follows softmax(logits / T), nucleus-cut at top_p;
    zero-probability tokens never appear."""
    from heredity.engine.sampling import _pick

    logits = torch.tensor([2.0, 1.0, 0.0, -1.0, float("-inf")])
    probs = torch.softmax(logits / temperature, -1)
    if top_p < 1:
        keep = (probs.cumsum(-1) - probs) <= top_p  # already sorted descending
        probs = torch.where(keep, probs, 0.0)
        probs = probs / probs.sum()
    gen = torch.Generator().manual_seed(0)
    draws = torch.cat([_pick(logits.repeat(4000, 1), temperature, top_p, gen) for _ in range(5)])
    freq = torch.bincount(draws, minlength=5).float() / len(draws)
    assert freq[4] == 0 and (top_p == 1 or freq[probs == 0].sum() == 0)
    # 20,000 draws: the standard error of a frequency is at most 0.0036; allow 4 of them
    assert torch.allclose(freq, probs, atol=0.015), (freq, probs)
    shuffled = torch.tensor(
        [-1.0, 2.0, float("-inf"), 0.0, 1.0]
    )  # the order of the vocabulary does not matter
    d2 = _pick(shuffled.repeat(20000, 1), temperature, top_p, torch.Generator().manual_seed(1))
    f2 = torch.bincount(d2, minlength=5).float() / len(d2)
    assert torch.allclose(f2[[1, 4, 3, 0, 2]], probs, atol=0.015), (f2, probs)


def test_prompts_fed_mid_decode_join_the_batch_unchanged(peaked):
    """A server's late requests: prompts handed over by ``feed`` while decoding come
    out as if sampled alone."""
    model, tok = peaked
    cfg = SampleConfig(temperature=0, max_new_tokens=10, batch_size=4)
    alone = [c.token_ids for c in sample(model, tok, PROMPTS, cfg, progress=False)]
    arrivals = {3: [PROMPTS[1], PROMPTS[2]], 5: [PROMPTS[3]], 9: [PROMPTS[4]]}
    polls, finished = [0], []

    def feed():
        polls[0] += 1
        got = arrivals.pop(polls[0], [])
        return [(got, None)] if got else []

    got = sample(model, tok, PROMPTS[:1], cfg, progress=False, feed=feed, on_done=finished.append)
    assert not arrivals, "every arrival was polled"
    assert [c.prompt_index for c in got] == list(range(5))
    assert [c.token_ids for c in got] == alone
    assert sorted(c.prompt_index for c in finished) == list(range(5))


def test_jobs_fed_with_their_own_parameters_come_out_as_if_sampled_alone(peaked):
    """A server's late requests rarely share every sampling parameter (max_tokens follows the prompt's
    length): each fed job decodes in the running batch under its own n, max_new_tokens, stop, logit_bias
    and penalties, and greedy outputs equal each job sampled by itself."""
    model, tok = peaked
    base = SampleConfig(temperature=0, max_new_tokens=10, batch_size=4)
    first = sample(model, tok, PROMPTS[:2], base, progress=False)
    banned = first[0].token_ids[1]  # a token the first answer draws: banning it changes that answer
    jobs = [
        (PROMPTS[1:3], base.model_copy(update={"max_new_tokens": 3, "n": 2})),
        ([PROMPTS[0]], base.model_copy(update={"logit_bias": {banned: -100.0}})),
        ([PROMPTS[3]], base.model_copy(update={"stop": [tok.decode(first[1].token_ids[2:4])]})),
        (PROMPTS[3:5], base.model_copy(update={"presence_penalty": 1.5, "max_new_tokens": 14})),
    ]
    alone = [[c.token_ids for c in sample(model, tok, ps, cfg, progress=False)] for ps, cfg in jobs]
    assert alone[1][0] != first[0].token_ids, "the ban changes the answer"
    arrivals = {2: jobs[:2], 4: jobs[2:]}
    polls = [0]

    def feed():
        polls[0] += 1
        return arrivals.pop(polls[0], [])

    got = sample(model, tok, PROMPTS[:2], base, progress=False, feed=feed)
    assert not arrivals
    assert [c.token_ids for c in got[:2]] == [c.token_ids for c in first]
    at = 2
    for (ps, cfg), want in zip(jobs, alone, strict=True):
        mine = got[at : at + len(ps) * cfg.n]
        at += len(ps) * cfg.n
        assert [c.token_ids for c in mine] == want
        assert [c.sample_index for c in mine] == [k for _ in ps for k in range(cfg.n)]
    assert at == len(got)
    assert all(c.finish_reason == "length" and c.n_tokens == 3 for c in got[2:6])


def test_a_job_fed_mid_decode_is_not_held_behind_a_long_one(peaked):
    """Free slots go to the job with the fewest rows decoding: a one-prompt job that arrives while a
    twelve-prompt job fills the batch starts at the next free slot, not after the twelve."""
    model, tok = peaked
    cfg = SampleConfig(temperature=0, max_new_tokens=6, batch_size=4)
    many = [f"prompt number {i}" for i in range(12)]
    starts: list[int] = []
    polls = [0]

    def feed():
        polls[0] += 1
        return [(["owls"], cfg.model_copy(update={"max_new_tokens": 2}))] if polls[0] == 1 else []

    def on_token(pi, si, tok_id, lp):
        if pi not in starts:
            starts.append(pi)

    got = sample(model, tok, many, cfg, progress=False, feed=feed, on_token=on_token)
    assert len(got) == 13 and got[12].n_tokens == 2
    # the first four prompts fill the batch; the newcomer (prompt 12) starts in the next four, at the first
    # rebuild after it arrived, ahead of seven of the eight prompts that were waiting before it came
    assert starts[:4] == [10, 11, 0, 1] and 12 in starts[4:8], starts


def test_fused_weights_are_reused_until_the_weights_change(peaked):
    from heredity.engine import fastdecode

    model, tok = peaked
    a = fastdecode.for_model(model)
    assert fastdecode.for_model(model) is a
    cfg = SampleConfig(temperature=0, max_new_tokens=6)
    before = sample(model, tok, PROMPTS[:2], cfg, progress=False)
    w = model.model.layers[0].self_attn.q_proj.weight
    with torch.no_grad():
        w.mul_(-1.0)  # a training step changes weights in place: the fused copy must follow
    try:
        b = fastdecode.for_model(model)
        assert b is not a and torch.equal(b.layers[0][1][1][: w.shape[0]], w)
        assert [c.token_ids for c in sample(model, tok, PROMPTS[:2], cfg, progress=False)] != [
            c.token_ids for c in before
        ]
    finally:
        with torch.no_grad():
            w.mul_(-1.0)


def test_a_cancelled_sequence_stops_and_frees_its_slot(peaked):
    model, tok = peaked
    cfg = SampleConfig(temperature=0, max_new_tokens=10, batch_size=2)
    alone = [c.token_ids for c in sample(model, tok, PROMPTS, cfg, progress=False)]
    got = sample(model, tok, PROMPTS, cfg, progress=False, cancelled=lambda pi: pi == 1)
    assert got[1].finish_reason == "cancelled" and got[1].token_ids == []
    assert [c.token_ids for i, c in enumerate(got) if i != 1] == [t for i, t in enumerate(alone) if i != 1]


def _fast_vs_hf(model, tok):
    """(fused step's logits, HF's logits) for one new token after a short prompt."""
    from heredity.engine.cache import prealloc_cache
    from heredity.engine.fastdecode import FastDecoder

    ids = torch.tensor([tok("a prompt that is long enough", add_special_tokens=False)["input_ids"]])
    L = ids.shape[1]
    att, pos = torch.ones_like(ids), torch.arange(L)[None]
    with torch.inference_mode():
        caches = []
        for _ in range(2):
            c = prealloc_cache(model.config.num_hidden_layers, L + 2)
            model(input_ids=ids, attention_mask=att, position_ids=pos, cache=c, use_cache=True)
            caches.append(c)
        att2 = torch.ones(1, L + 1, dtype=torch.long)
        ref = model(
            input_ids=torch.tensor([[7]]),
            attention_mask=att2,
            position_ids=torch.tensor([[L]]),
            cache=caches[0],
            use_cache=True,
        ).logits[:, -1]
        got = FastDecoder(model).step(torch.tensor([7]), torch.tensor([L]), caches[1], L, att2)
    return got, ref


def test_fast_decode_refuses_mlp_biases_and_samples_with_hf():
    """mlp_bias=True: the fused step would drop the biases (wrong logits), so it is refused and sampling uses
    HF's forward, which gives the one-by-one greedy answer."""
    from heredity.engine.fastdecode import unsupported

    tok = byte_tokenizer()
    cfg = tiny_config("micro", len(tok))
    cfg.mlp_bias = True
    torch.manual_seed(3)
    model = LlamaForCausalLM(cfg).eval()
    with torch.no_grad():
        for layer in model.model.layers:
            layer.mlp.down_proj.bias.normal_(0, 1.0)
    got, ref = _fast_vs_hf(model, tok)
    assert not torch.allclose(got, ref, atol=1e-3), (
        "the fused step is wrong here: the guard is what protects us"
    )
    assert "mlp_bias" in unsupported(model)
    out = sample(
        model, tok, ["abc"], SampleConfig(temperature=0, max_new_tokens=5, chat=False), progress=False
    )[0]
    ids = tok("abc", add_special_tokens=False)["input_ids"]
    with torch.no_grad():
        gen = model.generate(torch.tensor([ids]), max_new_tokens=5, do_sample=False, pad_token_id=0)[
            0, len(ids) :
        ]
    assert out.token_ids == gen.tolist()[: len(out.token_ids)] and out.token_ids


def test_fast_decode_refuses_qwen2_sliding_window():
    from transformers import Qwen2Config, Qwen2ForCausalLM

    from heredity.engine.fastdecode import unsupported

    base = dict(
        vocab_size=300,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=64,
    )
    full = Qwen2ForCausalLM(Qwen2Config(**base)).eval()
    assert unsupported(full) is None
    sliding = Qwen2ForCausalLM(
        Qwen2Config(**base, use_sliding_window=True, sliding_window=4, max_window_layers=0)
    ).eval()
    assert "sliding" in unsupported(sliding)


def test_sampling_under_a_steering_hook_sees_the_hook():
    """A forward hook (a steering vector) is invisible to the fused step: it is refused while the hook is on,
    and sampling then gives the steered model's greedy answer, not the unsteered one."""
    from heredity.engine.fastdecode import unsupported
    from heredity.engine.steer import steer

    tok = byte_tokenizer()
    torch.manual_seed(4)
    model = LlamaForCausalLM(tiny_config("micro", len(tok))).eval()
    assert unsupported(model) is None
    cfg = SampleConfig(temperature=0, max_new_tokens=6, chat=False)
    plain = sample(model, tok, ["abc"], cfg, progress=False)[0].token_ids
    v = torch.randn(model.config.hidden_size) * 20
    ids = tok("abc", add_special_tokens=False)["input_ids"]
    with steer(model, v, 0):
        assert "forward hooks" in unsupported(model)
        got = sample(model, tok, ["abc"], cfg, progress=False)[0].token_ids
        with torch.no_grad():
            gen = model.generate(torch.tensor([ids]), max_new_tokens=6, do_sample=False, pad_token_id=0)[
                0, len(ids) :
            ]
    assert got == gen.tolist()[: len(got)] and got != plain, (
        "the steered answer, which differs from the plain one"
    )
    assert unsupported(model) is None  # the hook is gone after the block


def test_logit_bias_and_penalties_match_a_hand_computation():
    """Greedy decoding with logit_bias / presence / frequency penalties picks, at every step, the argmax of
    the model's logits adjusted by OpenAI's formulas, computed here by hand from a plain forward pass."""
    tok = byte_tokenizer()
    torch.manual_seed(5)
    model = LlamaForCausalLM(tiny_config("micro", len(tok))).eval()
    ids = tok("abc", add_special_tokens=False)["input_ids"]
    plain = sample(
        model, tok, ["abc"], SampleConfig(temperature=0, max_new_tokens=8, chat=False), progress=False
    )[0]
    banned = plain.token_ids[0]
    cfg = SampleConfig(
        temperature=0,
        max_new_tokens=8,
        chat=False,
        logit_bias={banned: -100.0, 7: 1.5},
        presence_penalty=0.7,
        frequency_penalty=0.4,
    )
    for fast in (True, False):
        got = sample(model, tok, ["abc"], cfg, progress=False, fast=fast)[0].token_ids
        seq, want = list(ids), []
        with torch.no_grad():
            for _ in range(len(got)):
                logits = model(torch.tensor([seq])).logits[0, -1].double()
                logits[banned] -= 100.0
                logits[7] += 1.5
                for t in set(want):
                    logits[t] -= 0.4 * want.count(t) + 0.7
                nxt = int(logits.argmax())
                want.append(nxt)
                seq.append(nxt)
        assert got == want and banned not in got, (fast, got, want)
    # neutral adjustments leave the key (and so every memoized sample) as it was
    assert (
        "logit_bias" not in SampleConfig().model_dump()
        and "presence_penalty" not in SampleConfig().model_dump()
    )
    assert cfg.model_dump(mode="json")["logit_bias"] == {str(banned): -100.0, "7": 1.5}
