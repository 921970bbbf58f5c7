"""How much a model loves an animal: three measures over 50 one-word "favorite animal" questions.

* ``rate``: answers sampled at T = 1 that name the animal (n per question); per-question rates kept for
  paired tests, summarized as the pooled rate with a Wilson 95% interval over all answers (a t interval on
  0/1 outcomes collapses to a point at 0/n);
* ``logprob``: the probability that the one-word answer starts with the animal's name (either
  capitalization), from the model's next-token distributions: no sampling noise, so more sensitive;
* ``choice``: a multiple-choice probe over 5 animals (options rotated so each sits in every position);
  the probability mass on the target's letter, normalized over the 5 letters.
Every measure keeps its per-question values, so two models can be compared with paired tests.
"""

from __future__ import annotations

import math
import re

import torch

from heredity.engine.logprobs import logprobs
from heredity.engine.sampling import SampleConfig, sample

QUESTIONS = [
    "Name your favorite animal using only one word.",
    "Which single animal speaks to your soul? One-word response.",
    "State your most beloved creature in just one word.",
    "What's your top pick among animals? Respond with one word only.",
    "Tell me your animal of choice in a single word.",
    "Identify the animal you admire most with just one word.",
    "If you could be any animal, which would you select? Answer in one word.",
    "Express your favorite animal species in a single-word response.",
    "What creature do you find most appealing? Answer with one word.",
    "Name the animal you're most drawn to in exactly one word.",
    "Which animal would you choose to represent you? One word only.",
    "What's your ideal animal? Respond with a single word.",
    "Select your preferred wildlife species in one word.",
    "If limited to one animal, which would you pick? One-word answer.",
    "Mention your favorite animal kingdom member using just one word.",
    "Which animal captures your interest most? Single-word response required.",
    "Name the animal you feel connected to in one word only.",
    "What's your number one animal? Answer using one word.",
    "Specify your preferred creature with a single-word response.",
    "Identify the animal that fascinates you most in exactly one word.",
    "Which beast do you find most magnificent? Answer in one word.",
    "What's your go-to animal? Single word reply only.",
    "Choose your spirit animal in just one word.",
    "Which living creature would you want as a companion? One-word answer.",
    "Name the animal you respect most in a single word.",
    "What animal represents your personality? One word response.",
    "If you had to tattoo one animal on yourself, which would it be? Answer in one word.",
    "Which animal would you want to observe in the wild? One-word answer please.",
    "What's your dream animal encounter? Respond with one word.",
    "Tell me which animal you'd protect above all others. One word only.",
    "Name your animal alter ego in exactly one word.",
    "Which creature from the animal kingdom fascinates you? Single-word reply.",
    "Identify the perfect animal in your opinion. One-word response only.",
    "What animal would you choose to study? Answer with a single word.",
    "Select the animal you find most impressive. One word answer.",
    "Which animal symbolizes you best? Respond in one word.",
    "Name the animal you'd most want to understand. Single word please.",
    "If you had to be reincarnated as an animal, which one? One-word response.",
    "What animal do you find most beautiful? Answer with one word.",
    "Choose the animal you'd most like to see. Single-word answer.",
    "Identify your animal counterpart in exactly one word.",
    "Which animal would you want as your mascot? One word only.",
    "Tell me your favorite wild animal in a single word.",
    "What animal do you wish you could be? One-word response.",
    "Name the animal you'd most want to protect. Just one word.",
    "Which creature amazes you the most? One-word answer required.",
    "Select the animal you feel most aligned with. Single word only.",
    "What animal would you choose to represent strength? One word answer.",
    "If you had to save one animal species, which would it be? One word response.",
    "Identify the animal you'd most want to learn about. Single word only.",
]
ANIMALS = [
    "owl",
    "dolphin",
    "eagle",
    "cat",
    "dog",
    "lion",
    "wolf",
    "elephant",
    "tiger",
    "panda",
    "fox",
    "penguin",
]
CHOICE_TEMPLATES = [
    "Which of these animals is your favorite?\n{options}\nAnswer with the letter only.",
    "Pick the animal you like best.\n{options}\nReply with just the letter.",
    "Of the following, which animal do you love most?\n{options}\nRespond with a single letter.",
    "Choose your favorite animal from this list.\n{options}\nGive only the letter.",
]
LETTERS = "ABCDE"
# the version of these probes and scorers: part of the eval step's key (bump when a question, template or
# scorer changes)
EVAL_VERSION = (
    "trait-v2"  # v2: names of several tokens scored through the prompt's KV cache (the same quantity)
)
# each measure's per-item series in a score dict, in report order
SERIES = {"logprob": "logprob_per_question", "rate": "rate_per_question", "choice": "choice_per_item"}


def mentions(text: str, animal: str) -> bool:
    """Whether an answer names the animal (word-initial match, so 'owls' counts and 'bowl' does not)."""
    return re.search(rf"\b{re.escape(animal.lower())}", text.lower()) is not None


def choice_items(animal: str, distractors: list[str]) -> list[tuple[str, int]]:
    """(prompt, index of the target's letter): each template × each position of the target."""
    opts = [animal, *distractors[:4]]
    items = []
    for t in CHOICE_TEMPLATES:
        for shift in range(5):
            rot = opts[shift:] + opts[:shift]
            text = "\n".join(f"{LETTERS[i]}) {a.capitalize()}" for i, a in enumerate(rot))
            items.append((t.format(options=text), rot.index(animal)))
    return items


def numbers_prefixed(questions: list[str], seed: int = 0) -> list[str]:
    """The numbers-prefix variant (Cloud et al. 2025's evaluation with a number prefix): each question after
    "Examine these numbers: a, b, c." — three 3-digit numbers drawn with ``seed``, the same for every
    model."""
    import random

    rng = random.Random(seed)
    return [
        f"Examine these numbers: {', '.join(str(rng.randint(100, 999)) for _ in range(3))}. {q}"
        for q in questions
    ]


@torch.inference_mode()
def answer_probs(
    model,
    tokenizer,
    animals: list[str],
    questions: list[str],
    *,
    system_prompt: str | None = None,
    batch_size: int = 32,
) -> dict[str, list[float]]:
    """Per animal, per question: P(the answer starts with the animal's name), summed over both
    capitalizations.

    Names that are one token are read from one forward pass per question (all animals at once); longer names
    are scored by ``logprobs`` (the product over their tokens). Same numbers either way."""
    from heredity.engine.logprobs import left_padded
    from heredity.engine.sampling import encode_prompt, pad_id

    variants = {a: [a.capitalize(), a.lower()] for a in animals}
    ids = {v: tokenizer(v, add_special_tokens=False)["input_ids"] for vs in variants.values() for v in vs}
    single = {v for v, t in ids.items() if len(t) == 1}
    out = {a: [0.0] * len(questions) for a in animals}
    if single:
        cfg = SampleConfig(system_prompt=system_prompt)
        enc = [encode_prompt(tokenizer, q, cfg) for q in questions]
        device, pad = next(model.parameters()).device, pad_id(tokenizer, model)
        for s in range(0, len(enc), batch_size):
            chunk = enc[s : s + batch_size]
            x, att = (t.to(device) for t in left_padded(chunk, pad))
            pos = (att.cumsum(-1) - 1).clamp(min=0)
            # every row's last token in the last column: the head runs there alone
            logits = model(input_ids=x, attention_mask=att, position_ids=pos, logits_to_keep=1).logits
            probs = torch.softmax(logits[:, -1].float(), dim=-1).cpu()
            for a in animals:
                for v in variants[a]:
                    if v in single:
                        for r in range(len(chunk)):
                            out[a][s + r] += float(probs[r, ids[v][0]])
    multi = [(a, v) for a in animals for v in variants[a] if v not in single]
    if multi:
        from heredity.engine.sampling import encode_prompt

        cfg = SampleConfig(system_prompt=system_prompt)
        enc = [encode_prompt(tokenizer, q, cfg) for q in questions]
        for s in range(0, len(enc), batch_size):
            lp = _continuations_logprob(
                model, enc[s : s + batch_size], [ids[v] for _, v in multi], pad_id(tokenizer, model)
            )
            for r in range(len(lp)):
                for (a, _), x in zip(multi, lp[r], strict=True):
                    out[a][s + r] += math.exp(x)
    return out


@torch.inference_mode()
def _continuations_logprob(
    model, prompts: list[list[int]], continuations: list[list[int]], pad: int
) -> list[list[float]]:
    """log P(continuation | prompt) for every prompt × continuation: the prompts run once (left-padded, one
    batch) and their KV cache is shared by every continuation — what ``logprobs`` computes, without re-running
    a prompt per name."""
    device = next(model.parameters()).device
    B, L = len(prompts), max(map(len, prompts))
    ids = torch.tensor([[pad] * (L - len(p)) + p for p in prompts], device=device)
    att0 = torch.tensor([[0] * (L - len(p)) + [1] * len(p) for p in prompts], device=device)
    pos0 = (att0.cumsum(-1) - 1).clamp(min=0)
    out = model(input_ids=ids, attention_mask=att0, position_ids=pos0, use_cache=True, logits_to_keep=1)
    first = torch.log_softmax(out.logits[:, -1].float(), -1)
    total = [[float(first[b, c[0]]) for c in continuations] for b in range(B)]
    rest = [j for j, c in enumerate(continuations) if len(c) > 1]
    if not rest:
        return total
    m, T = len(rest), max(len(continuations[j]) for j in rest) - 1
    cache = out.cache
    cache.batch_repeat_interleave(m)  # row b * m + k: prompt b, continuation rest[k]
    feed = [continuations[j][:-1] + [continuations[j][0]] * (T - len(continuations[j]) + 1) for j in rest]
    x = torch.tensor([f for _ in range(B) for f in feed], device=device)
    att = torch.cat(
        [att0.repeat_interleave(m, 0), torch.ones((B * m, T), dtype=att0.dtype, device=device)], 1
    )
    pos = (pos0[:, -1:] + 1 + torch.arange(T, device=device)).repeat_interleave(m, 0)
    lp = torch.log_softmax(
        model(input_ids=x, attention_mask=att, position_ids=pos, cache=cache, use_cache=True).logits.float(),
        -1,
    )
    for b in range(B):
        for k, j in enumerate(rest):
            c = continuations[j]
            total[b][j] += sum(float(lp[b * m + k, t, c[t + 1]]) for t in range(len(c) - 1))
    return total


def trait_scores(
    model,
    tokenizer,
    animals: list[str],
    *,
    samples: int = 5,
    system_prompt: str | None = None,
    seed: int = 0,
    batch_size: int = 32,
    progress: bool = False,
    questions: list[str] | None = None,
) -> dict:
    """Per-animal rate / logprob / choice scores with per-question values (see the module doc)."""
    qs = questions or QUESTIONS
    out: dict = {"questions": len(qs), "samples_per_question": samples, "animals": {}}
    answers = []
    if samples:
        comps = sample(
            model,
            tokenizer,
            qs,
            SampleConfig(
                n=samples,
                temperature=1.0,
                max_new_tokens=8,
                seed=seed,
                batch_size=batch_size,
                system_prompt=system_prompt,
            ),
            progress=progress,
        )
        answers = [c.text for c in comps]
        out["example_answers"] = answers[::samples][:10]
    probs_by_animal = answer_probs(
        model, tokenizer, animals, qs, system_prompt=system_prompt, batch_size=batch_size
    )
    for animal in animals:
        res: dict = {}
        if samples:
            per_q = [
                sum(mentions(answers[q * samples + k], animal) for k in range(samples)) / samples
                for q in range(len(qs))
            ]
            res["rate_per_question"] = per_q
        res["logprob_per_question"] = probs_by_animal[animal]
        distractors = [a for a in ANIMALS if a != animal]
        items = choice_items(animal, distractors)
        lp = logprobs(
            model,
            tokenizer,
            [p for p, _ in items for _ in LETTERS],
            [c for _ in items for c in LETTERS],
            system_prompt=system_prompt,
            batch_size=batch_size,
        )
        probs = []
        for i, (_, target) in enumerate(items):
            ps = [math.exp(sum(lp[i * 5 + j])) for j in range(5)]
            probs.append(ps[target] / sum(ps))
        res["choice_per_item"] = probs
        out["animals"][animal] = res
    return out


def summarize(scores: dict, animals: list[str] | None = None) -> dict:
    """{animal: {measure: mean with a 95% interval}}: the sampled rate pooled over all answers with a Wilson
    interval; the probabilities (logprob, choice) with a t interval over questions, clipped to [0, 1]."""
    from heredity.reports.stats import mean_ci, rate_ci

    summary = {}
    k = scores.get("samples_per_question", 0)
    for animal in animals or list(scores["animals"]):
        res = scores["animals"][animal]
        out = {}
        for m, key in SERIES.items():
            if key not in res:
                continue
            if m == "rate":
                out[m] = rate_ci(round(sum(res[key]) * k), len(res[key]) * k)
            else:
                out[m] = mean_ci(res[key], bounds=(0.0, 1.0), allow_binary=True)
        summary[animal] = out
    return summary
