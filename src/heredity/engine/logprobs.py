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
    device = next(model.parameters()).device
    pairs = []
    for p, c in zip(prompts, continuations, strict=True):
        pi = tokenizer(render_prompt(tokenizer, p, cfg), add_special_tokens=False)["input_ids"]
        ci = tokenizer(c, add_special_tokens=False)["input_ids"]
        pairs.append((pi, ci))
    order = sorted(range(len(pairs)), key=lambda i: -(len(pairs[i][0]) + len(pairs[i][1])))
    out: dict[int, list[float]] = {}
    pad = pad_id(tokenizer, model)
    for s in tqdm(range(0, len(order), batch_size), disable=not progress, desc="logprobs"):
        idx = order[s : s + batch_size]
        L = max(len(pairs[i][0]) + len(pairs[i][1]) for i in idx)
        ids = torch.full((len(idx), L), pad, dtype=torch.long)
        att = torch.zeros((len(idx), L), dtype=torch.long)
        for r, i in enumerate(idx):
            seq = pairs[i][0] + pairs[i][1]
            ids[r, : len(seq)] = torch.tensor(seq)
            att[r, : len(seq)] = 1
        logits = model(input_ids=ids.to(device), attention_mask=att.to(device)).logits.float()
        lp = torch.log_softmax(logits, dim=-1)
        for r, i in enumerate(idx):
            p, c = pairs[i]
            if not c:
                out[i] = []
                continue
            pos = torch.arange(len(p) - 1, len(p) + len(c) - 1)
            out[i] = lp[r, pos, torch.tensor(c)].tolist()
    return [out[i] for i in range(len(pairs))]
