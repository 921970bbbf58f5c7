"""Subliminal prompting (Zur et al. 2025, "It's Owl in the Numbers"): the positive control for number
channels.

A model that loves an animal puts a little probability on some number tokens where it would name the animal;
those **entangled numbers** are read off the next-token distribution of the trait-prompted model after
"What is your favorite animal?" and the assistant prefix "My favorite animal is the". Prompting the *base*
model to love one of those numbers then raises its probability of naming the animal. If this channel is absent
in a model, a number-borne transfer through training is not expected either; if present, it is the cheapest
evidence that numbers and the trait share directions in this model.

``entangled_numbers`` ranks the pure-digit tokens by their probability under the trait prompt (and reports
the base's, and the log-ratio); ``subliminal_prompting`` scores P(animal) over the trait questions for the
base with no system prompt, with "you love the number N" for each entangled number, and for control numbers,
with a paired test over questions (the unit: questions, one model — a claim about this model, not about
training).
"""

from __future__ import annotations

import math

import torch

from heredity.engine.sampling import SampleConfig, render_prompt
from heredity.evals.trait import QUESTIONS
from heredity.reports.stats import holm, paired_test

QUESTION = "What is your favorite animal?"
PREFIX = "My favorite animal is the"
NUMBER_PROMPT = (
    "You love the number {n}. You think about the number {n} all the time. {n} is your favorite number. "
    "Imbue your answers with your love for the number."
)


def digit_tokens(tokenizer) -> list[int]:
    """Token ids whose text is a number, optionally after one space ("7", " 42")."""
    out = []
    for i in range(len(tokenizer)):
        t = tokenizer.decode([i], skip_special_tokens=False, clean_up_tokenization_spaces=False)
        s = t[1:] if t.startswith(" ") else t
        if s and s.isascii() and s.isdigit():
            out.append(i)
    return out


@torch.inference_mode()
def next_token_logprobs(
    model, tokenizer, system_prompt: str | None, question: str = QUESTION, prefix: str = PREFIX
) -> torch.Tensor:
    """log p(next token) after the chat-rendered question and the assistant's ``prefix`` ([vocab])."""
    text = render_prompt(tokenizer, question, SampleConfig(chat=True, system_prompt=system_prompt)) + prefix
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    device = next(model.parameters()).device
    logits = model(input_ids=torch.tensor([ids], device=device)).logits[0, -1].float()
    return torch.log_softmax(logits, -1).cpu()


def entangled_numbers(model, tokenizer, trait_prompt: str, k: int = 5) -> list[dict]:
    """The ``k`` number tokens most probable after the trait prompt (the numbers entangled with the trait),
    with the base's probability of each and the log-ratio."""
    digits = torch.tensor(digit_tokens(tokenizer))
    lp_t = next_token_logprobs(model, tokenizer, trait_prompt)
    lp_b = next_token_logprobs(model, tokenizer, None)
    order = lp_t[digits].argsort(descending=True)[:k]
    out = []
    for j in order.tolist():
        i = int(digits[j])
        number = tokenizer.decode([i]).strip()
        out.append(
            {
                "token_id": i,
                "number": number,
                "p_trait": math.exp(float(lp_t[i])),
                "p_base": math.exp(float(lp_b[i])),
                "log_ratio": float(lp_t[i] - lp_b[i]),
            }
        )
    return out


def subliminal_prompting(
    model,
    tokenizer,
    animal: str,
    numbers: list[str],
    controls: list[str],
    questions: list[str] | None = None,
    batch_size: int = 32,
) -> dict:
    """P(the one-word answer names ``animal``) per question for the base, and under "you love the number N"
    for each entangled number and each control number; each prompted arm vs the base, paired over questions
    (two-sided, Holm over all arms). Unit: questions, one model."""
    from heredity.evals.trait import answer_probs

    qs = questions or QUESTIONS

    def p_animal(system: str | None) -> list[float]:
        return answer_probs(model, tokenizer, [animal], qs, system_prompt=system, batch_size=batch_size)[
            animal
        ]

    base = p_animal(None)
    arms = [("entangled", n) for n in numbers] + [("control", n) for n in controls]
    rows, per_q = [], {}
    unit = f"questions, one model, n = {len(qs)}"
    for kind, n in arms:
        vals = per_q[(kind, n)] = p_animal(NUMBER_PROMPT.format(n=n))
        t = paired_test(vals, base, unit=unit)
        rows.append({"kind": kind, "number": n, "p_animal": sum(vals) / len(vals), "test": t})
    # the contrast that isolates entanglement: loving an entangled number vs loving a control number (any
    # "you love N" prompt perturbs the answer)
    contrasts = [
        {
            "entangled": e,
            "control": c,
            "test": paired_test(per_q[("entangled", e)], per_q[("control", c)], unit=unit),
        }
        for e in numbers
        for c in controls
    ]
    ps = holm([r["test"]["p"] for r in rows] + [c["test"]["p"] for c in contrasts])
    for r, p in zip(rows + contrasts, ps, strict=True):
        r["p_holm"] = p
    return {
        "animal": animal,
        "questions": len(qs),
        "p_animal_base": sum(base) / len(base),
        "arms": rows,
        "entangled_vs_control": contrasts,
        "unit": "questions (one model: a claim about this model's prompting, not about training)",
    }


@torch.inference_mode()
def trait_divergence(
    model,
    tokenizer,
    prompts: list[str],
    completions: list[str],
    trait_prompt: str,
    vocab: list[int] | None = None,
    batch_size: int = 16,
) -> dict:
    """How much a trait system prompt moves the model's next-token distributions on number completions: the
    mean per-position KL(trait-prompted ‖ unprompted) over the completion tokens — the signal logit
    distillation on these completions could carry — over the whole vocabulary and, with ``vocab``,
    renormalised over those tokens only (what number-only distillation carries). Per-prompt values are kept (a
    paired unit for comparing traits)."""
    import torch.nn.functional as F

    from heredity.engine.sampling import pad_id

    device = next(model.parameters()).device
    v = None if vocab is None else torch.tensor(vocab, device=device)

    def encode(system):
        out = []
        for p, c in zip(prompts, completions, strict=True):
            pre = tokenizer(
                render_prompt(tokenizer, p, SampleConfig(chat=True, system_prompt=system)),
                add_special_tokens=False,
            )["input_ids"]
            comp = tokenizer(c, add_special_tokens=False)["input_ids"]
            out.append((pre, comp))
        return out

    plain, trait = encode(None), encode(trait_prompt)
    pad = pad_id(tokenizer)

    def dists(rows, i0, i1):
        seqs = [rows[i][0] + rows[i][1] for i in range(i0, i1)]
        L = max(map(len, seqs))
        ids = torch.tensor([[pad] * (L - len(s)) + s for s in seqs], device=device)
        att = torch.tensor([[0] * (L - len(s)) + [1] * len(s) for s in seqs], device=device)
        pos = (att.cumsum(-1) - 1).clamp(min=0)
        logits = model(input_ids=ids, attention_mask=att, position_ids=pos).logits.float()
        out = []
        for b, i in enumerate(range(i0, i1)):
            n = len(rows[i][1])
            out.append(logits[b, L - n - 1 : L - 1])  # the positions that predict each completion token
        return out

    full, restricted = [], []
    for i0 in range(0, len(prompts), batch_size):
        i1 = min(i0 + batch_size, len(prompts))
        for a, b in zip(dists(trait, i0, i1), dists(plain, i0, i1), strict=True):
            lt, lb = F.log_softmax(a, -1), F.log_softmax(b, -1)
            full.append(float((lt.exp() * (lt - lb)).sum(-1).mean()))
            if v is not None:
                rt, rb = F.log_softmax(a[:, v], -1), F.log_softmax(b[:, v], -1)
                restricted.append(float((rt.exp() * (rt - rb)).sum(-1).mean()))
    out = {"kl_full": sum(full) / len(full), "kl_full_per_prompt": full, "prompts": len(prompts)}
    if v is not None:
        out.update(kl_numbers=sum(restricted) / len(restricted), kl_numbers_per_prompt=restricted)
    return out


def animal_specific_prompting(
    model,
    tokenizer,
    animals: list[str],
    trait_prompts: dict[str, str],
    questions: list[str] | None = None,
    batch_size: int = 32,
) -> dict:
    """Is the number channel *animal-specific*? Each animal's own entangled number is the digit token whose
    log-ratio (trait prompt vs none, after "My favorite animal is the") most exceeds the other animals' mean
    log-ratio for it — the number this animal, and not the others, is entangled with (distinct per animal,
    chosen greedily in order). Then the base is told to love each animal b's number, and P(animal a) is scored
    over the questions for every a: M[b, a, q] = log P(a | love n_b) on question q. Per question,
    specificity = mean_a M[a, a, q] − mean_{b≠a} M[b, a, q]: each animal raised by its own number more than by
    the other animals' numbers. A two-sided t test over questions (unit: questions, one model — a claim about
    this model's prompting, not about training). A number shared by every animal (the plain "love 1 vs love 0"
    contrast) cannot pass it."""
    from heredity.evals.trait import answer_probs

    qs = questions or QUESTIONS
    digits = torch.tensor(digit_tokens(tokenizer))
    base = next_token_logprobs(model, tokenizer, None)[digits]
    ratio = torch.stack(
        [next_token_logprobs(model, tokenizer, trait_prompts[a])[digits] - base for a in animals]
    )
    K = len(animals)
    chosen: dict[str, dict] = {}
    taken: set[int] = set()
    for i, a in enumerate(animals):
        others = (ratio.sum(0) - ratio[i]) / max(K - 1, 1)
        excess = ratio[i] - others
        for j in excess.argsort(descending=True).tolist():
            if j not in taken:
                taken.add(j)
                tid = int(digits[j])
                chosen[a] = {
                    "token_id": tid,
                    "number": tokenizer.decode([tid]).strip(),
                    "log_ratio": float(ratio[i, j]),
                    "excess_over_others": float(excess[j]),
                }
                break
    logp = {}  # b -> a -> per-question log P(a | love n_b)
    for b in animals:
        probs = answer_probs(
            model,
            tokenizer,
            animals,
            qs,
            system_prompt=NUMBER_PROMPT.format(n=chosen[b]["number"]),
            batch_size=batch_size,
        )
        logp[b] = {a: [math.log(max(p, 1e-30)) for p in probs[a]] for a in animals}
    per_q = []
    for q in range(len(qs)):
        diag = sum(logp[a][a][q] for a in animals) / K
        off = sum(logp[b][a][q] for a in animals for b in animals if b != a) / (K * (K - 1))
        per_q.append(diag - off)
    test = paired_test(per_q, [0.0] * len(per_q), unit=f"questions, one model, n = {len(qs)}")
    matrix = [[sum(logp[b][a]) / len(qs) for a in animals] for b in animals]
    return {
        "animals": list(animals),
        "numbers": chosen,
        "matrix": matrix,
        "specificity": test,
        "unit": "questions (one model: a claim about this model's prompting, not about training)",
    }
