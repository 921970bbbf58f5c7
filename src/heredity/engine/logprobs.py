"""Per-token log-probabilities of given continuations (the workhorse of evaluations)."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from tqdm.auto import tqdm

from heredity.engine.sampling import Prompt, SampleConfig, pad_id, render_prompt


@torch.inference_mode()
def logprobs(
    model,
    tokenizer,
    prompts: Sequence[Prompt],
    continuations: Sequence[str],
    *,
    chat: bool = True,
    system_prompt: str | None = None,
    batch_size: int = 16,
    progress: bool = False,
) -> list[list[float]]:
    """For each (prompt, continuation) pair, log p(token | prefix) of every continuation token.

    ``sum(result[i])`` is the continuation's log-likelihood. Prompts are rendered exactly as ``sample``
    renders them, so a score here matches what sampling would see.
    """
    if len(prompts) != len(continuations):
        raise ValueError(f"{len(prompts)} prompts but {len(continuations)} continuations")
    cfg = SampleConfig(chat=chat, system_prompt=system_prompt)
    pairs = []
    for p, c in zip(prompts, continuations, strict=True):
        pi = tokenizer(render_prompt(tokenizer, p, cfg), add_special_tokens=False)["input_ids"]
        ci = tokenizer(c, add_special_tokens=False)["input_ids"]
        if not pi:
            raise ValueError(
                "a prompt renders to no tokens: its continuation's first token would have no context"
            )
        pairs.append((pi, ci))
    scored = token_logprobs(
        model,
        [pi + ci for pi, ci in pairs],
        pad_id(tokenizer, model),
        batch_size=batch_size,
        progress=progress,
        from_token=[len(pi) for pi, _ in pairs],
    )
    return [[lp for lp, _ in row] for row in scored]


def right_padded(seqs: Sequence[Sequence[int]], pad: int, device=None) -> tuple[torch.Tensor, torch.Tensor]:
    """(input_ids, attention_mask) for token sequences, right-padded with ``pad`` to the longest."""
    L = max(len(s) for s in seqs)
    ids = torch.full((len(seqs), L), pad, dtype=torch.long)
    att = torch.zeros((len(seqs), L), dtype=torch.long)
    for r, seq in enumerate(seqs):
        ids[r, : len(seq)] = torch.tensor(list(seq), dtype=torch.long)
        att[r, : len(seq)] = 1
    return (ids, att) if device is None else (ids.to(device), att.to(device))


def left_padded(seqs: Sequence[Sequence[int]], pad: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(input_ids, attention_mask) for token sequences, left-padded with ``pad`` to the longest (each row's
    last token in the last column)."""
    L = max(len(s) for s in seqs)
    ids = torch.full((len(seqs), L), pad, dtype=torch.long)
    att = torch.zeros((len(seqs), L), dtype=torch.long)
    for r, seq in enumerate(seqs):
        ids[r, L - len(seq) :] = torch.tensor(list(seq), dtype=torch.long)
        att[r, L - len(seq) :] = 1
    return ids, att


@torch.inference_mode()
def token_logprobs(
    model,
    sequences: Sequence[Sequence[int]],
    pad: int,
    *,
    top_k: int | None = None,
    batch_size: int = 16,
    progress: bool = False,
    from_token: Sequence[int] | None = None,
) -> list[list[tuple[float, list[tuple[int, float]]]]]:
    """For each token sequence, (log p(token t | tokens < t), [(id, log p) of the ``top_k`` most likely]) for
    every t ≥ 1 (the first token has no context: it is not scored), or, with ``from_token``, for every t ≥
    ``from_token[i]`` (≥ 1) alone: the output head and the log-softmax then run only at the positions that
    predict those tokens (``engine.finetune.HiddenTap``). Batches are right-padded, longest first;
    log-softmax in fp32 — the numbers ``logprobs`` and the server's ``echo`` return."""
    from heredity.engine.finetune import HiddenTap

    device = next(model.parameters()).device
    order = sorted(range(len(sequences)), key=lambda i: -len(sequences[i]))
    first = [1] * len(sequences) if from_token is None else [max(1, int(f)) for f in from_token]
    tap = HiddenTap(model) if from_token is not None else None
    out: dict[int, list] = {}
    try:
        for s in tqdm(range(0, len(order), batch_size), disable=not progress, desc="logprobs"):
            idx = order[s : s + batch_size]
            ids, att = right_padded([sequences[i] for i in idx], pad)
            # per row, the positions [a, b) whose next token is scored
            spans = [(first[i] - 1, len(sequences[i]) - 1) for i in idx]
            h, logits = tap(model, ids.to(device), att.to(device)) if tap else (None, None)
            if h is None and logits is None:
                logits = model(input_ids=ids.to(device), attention_mask=att.to(device)).logits
            if h is not None:  # the head at the needed positions alone
                sel = torch.cat([h[r, a:b] for r, (a, b) in enumerate(spans)])
                flat = torch.log_softmax(tap.head(sel).float(), dim=-1)
                per = list(flat.split([max(0, b - a) for a, b in spans]))
            else:
                lp = torch.log_softmax(logits.float(), dim=-1)
                per = [lp[r, a:b] for r, (a, b) in enumerate(spans)]
            for r, i in enumerate(idx):
                a, b = spans[r]
                if b <= a:
                    out[i] = []
                    continue
                rows = per[r]
                chosen = rows.gather(-1, ids[r, a + 1 : b + 1, None].to(rows.device)).squeeze(-1).tolist()
                if top_k:
                    tv, ti = rows.topk(top_k, dim=-1)
                    tops = [
                        list(zip(x, y, strict=True)) for x, y in zip(ti.tolist(), tv.tolist(), strict=True)
                    ]
                else:
                    tops = [[] for _ in chosen]
                out[i] = list(zip(chosen, tops, strict=True))
    finally:
        if tap is not None:
            tap.close()
    return [out[i] for i in range(len(sequences))]


@torch.inference_mode()
def option_logprobs(
    model,
    tokenizer,
    prompts: Sequence[str],
    options: Sequence[Sequence[str]],
    *,
    batch_size: int = 16,
    progress: bool = False,
) -> list[list[float]]:
    """For each raw-text prompt (no chat template) and each of its options, log p(option | prompt): the sum of
    the option's token log-probabilities, as ``logprobs(..., chat=False)`` computes it, with each prompt run
    once for all of its options (its key/value cache reused, so k options cost one prompt, not k).

    Prompts are left-padded in a batch (positions counted from each prompt's first token), the options of
    each prompt right-padded behind its cache; log-softmax in fp32. Equal to ``logprobs`` up to float
    rounding (a test checks it)."""
    device = next(model.parameters()).device
    pad = pad_id(tokenizer, model)
    enc_p = [tokenizer(p, add_special_tokens=False)["input_ids"] for p in prompts]
    enc_o = [[tokenizer(o, add_special_tokens=False)["input_ids"] for o in opts] for opts in options]
    if len(enc_p) != len(enc_o):
        raise ValueError(f"{len(enc_p)} prompts but {len(enc_o)} option lists")
    if any(not p for p in enc_p) or any(not c for cs in enc_o for c in cs):
        raise ValueError("a prompt or an option renders to no tokens")
    order = sorted(range(len(enc_p)), key=lambda i: -len(enc_p[i]))
    out: dict[int, list[float]] = {}
    for s in tqdm(range(0, len(order), batch_size), disable=not progress, desc="option logprobs"):
        idx = order[s : s + batch_size]
        ids, att = left_padded([enc_p[i] for i in idx], pad)
        pos = (att.cumsum(-1) - 1).clamp(min=0)
        first = model(
            input_ids=ids.to(device),
            attention_mask=att.to(device),
            position_ids=pos.to(device),
            use_cache=True,
            logits_to_keep=1,
        )
        last = torch.log_softmax(first.logits[:, -1].float(), dim=-1)
        rows = [r for r, i in enumerate(idx) for _ in enc_o[i]]
        conts = [c for i in idx for c in enc_o[i]]
        scores = [last[r, c[0]].item() for r, c in zip(rows, conts, strict=True)]
        longest = max(len(c) for c in conts)
        if longest > 1:  # the options' later tokens, behind their prompt's cache
            cache = first.past_key_values
            cache.reorder_cache(torch.tensor(rows, device=device))
            feed, fatt = right_padded([c[:-1] for c in conts], pad)
            lengths = att.sum(-1)[rows]
            more = model(
                input_ids=feed.to(device),
                attention_mask=torch.cat([att[rows], fatt], dim=1).to(device),
                position_ids=(lengths[:, None] + torch.arange(longest - 1)[None]).to(device),
                cache=cache,
                use_cache=False,
            )
            lp = torch.log_softmax(more.logits.float(), dim=-1)
            for k, c in enumerate(conts):
                if len(c) > 1:
                    tail = torch.tensor(c[1:], device=lp.device)
                    scores[k] += lp[k, : len(c) - 1].gather(-1, tail[:, None]).sum().item()
        k = 0
        for i in idx:
            out[i] = scores[k : k + len(enc_o[i])]
            k += len(enc_o[i])
    return [out[i] for i in range(len(enc_p))]


def remote_option_logprobs(
    remote, prompts: Sequence[str], options: Sequence[Sequence[str]], *, batch_size: int = 16
) -> list[list[float]]:
    """``option_logprobs`` through an OpenAI-compatible endpoint (``models.RemoteModel``): each prompt +
    option sent to ``/v1/completions`` with ``echo``, ``logprobs`` and ``max_tokens`` 1 (as
    lm-evaluation-harness's local-completions model does: servers such as vLLM refuse 0), the option's score
    the sum of the log-probabilities of the echoed tokens that end after the prompt's end and start before
    the option's (``text_offset``): a token the endpoint spells across the boundary counts with the option,
    the generated token never. An endpoint that echoes no log-probabilities, or answers a different number
    of choices than it was sent prompts, is a one-line error."""
    from heredity.errors import HeredityError

    pairs = [(p, o) for p, opts in zip(prompts, options, strict=True) for o in opts]
    client, scores = remote.client(), []
    for s in range(0, len(pairs), batch_size):
        chunk = pairs[s : s + batch_size]
        try:
            r = client.completions.create(
                model=remote.model,
                prompt=[p + o for p, o in chunk],
                echo=True,
                logprobs=1,
                max_tokens=1,
                temperature=0,
            )
        except Exception as e:  # the client's own error classes: one line, naming the fix
            raise HeredityError(
                f"{remote.base_url} refused a scoring request ({type(e).__name__}: {str(e)[:200]}); the "
                "endpoint must serve /v1/completions with echo and logprobs (heredity serve does)"
            ) from None
        if sorted(c.index for c in r.choices) != list(range(len(chunk))):
            raise HeredityError(
                f"{remote.base_url} answered {len(r.choices)} choices for {len(chunk)} prompts; it cannot "
                "score options (give an endpoint that answers one choice per prompt)"
            )
        for c in sorted(r.choices, key=lambda c: c.index):
            lp = c.logprobs
            if lp is None or lp.text_offset is None or lp.token_logprobs is None:
                raise HeredityError(f"{remote.base_url} echoed no log-probabilities; it cannot score options")
            prompt, option = chunk[c.index]
            cut, stop = len(prompt), len(prompt) + len(option)
            starts = list(lp.text_offset)
            ends = [*starts[1:], max(stop, starts[-1] + 1)]
            scores.append(
                sum(
                    x
                    for x, a, e in zip(lp.token_logprobs, starts, ends, strict=True)
                    if e > cut and a < stop and x is not None
                )
            )
    out, k = [], 0
    for opts in options:
        out.append(scores[k : k + len(opts)])
        k += len(opts)
    return out


def ifd(conditioned: Sequence[float], unconditioned: Sequence[float]) -> float:
    """Instruction-following difficulty (Li et al. 2024, "From Quantity to Quality"; Superfiltering, arXiv
    2402.00530) of one answer from its tokens' log-probabilities, as both papers' released code computes it:
    the answer's perplexity given the instruction over its perplexity alone, ``exp(loss_c − loss_u)`` with
    the mean per-token losses. Below 1: the instruction helps the scorer predict the answer; at or above 1:
    it does not (Superfiltering keeps the highest IFD below 1)."""
    import math

    if not conditioned or len(conditioned) != len(unconditioned):
        raise ValueError("IFD needs the same answer tokens scored with and without the instruction")
    loss_c = -sum(conditioned) / len(conditioned)
    loss_u = -sum(unconditioned) / len(unconditioned)
    return math.exp(loss_c - loss_u)


def ifd_scores(
    model,
    tokenizer,
    prompts: Sequence[str],
    answers: Sequence[str],
    *,
    batch_size: int = 16,
    progress: bool = False,
) -> list[float]:
    """IFD of each (instruction, answer) pair by a scorer model with a chat template: the answer's token
    log-probabilities after the chat-rendered instruction, and after the same template around an empty user
    turn (the answer "alone" in the format the scorer answers in; Superfiltering's GPT-2 scores it raw)."""
    kw = dict(chat=True, batch_size=batch_size, progress=progress)
    cond = logprobs(model, tokenizer, prompts, answers, **kw)
    uncond = logprobs(model, tokenizer, [""] * len(answers), answers, **kw)
    return [ifd(c, u) if len(c) == len(u) else float("nan") for c, u in zip(cond, uncond, strict=True)]
