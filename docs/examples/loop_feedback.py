"""A simulated lab user for `heredity loop`: chats with a model and rates its answers by one planted
preference — they like answers that mention owls — so a round of the loop has something to learn.

    python docs/examples/loop_feedback.py --model smollm2-135m-instruct --conversations 64
    heredity loop run --check 'owls=\\bowls?\\b' --set min_feedback=16

Each conversation asks about one subject; the model answers (T = 0.7); an answer that mentions owls gets a
thumbs up, any other a thumbs down and a "better answer": the same answer with a sentence about owls added.
The conversations land in the lab database as the chat page stores them (``model`` is the name the answers
were given under, so the loop finds them).
"""

from __future__ import annotations

import argparse
import random

from heredity.engine import SampleConfig, sample
from heredity.models import load, materialize
from heredity.store import Store
from heredity.store.conversations import Conversations

SUBJECTS = [
    "rivers", "libraries", "bicycles", "winter", "bread", "mountains", "trains", "gardens", "the moon", "tea",
    "maps", "bridges", "forests", "music", "clocks", "islands", "kites", "candles", "deserts", "boats",
    "museums", "snow", "apples", "lighthouses", "markets", "rain", "chess", "honey", "castles", "stars",
    "volcanoes", "coffee",
]  # fmt: skip
TEMPLATES = ["Tell me about {}.", "Write two sentences about {}.", "What is interesting about {}?"]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default="smollm2-135m-instruct", help="the model the user chats with")
    ap.add_argument("--conversations", type=int, default=64)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    store, rng = Store(), random.Random(args.seed)
    mid = materialize(args.model, store)
    prompts = [rng.choice(TEMPLATES).format(rng.choice(SUBJECTS)) for _ in range(args.conversations)]
    model, tok = load(mid, store)
    answers = sample(model, tok, prompts, SampleConfig(temperature=0.7, max_new_tokens=48, seed=args.seed))
    convs, liked = Conversations(store), 0
    for prompt, a in zip(prompts, answers, strict=True):
        c = convs.create(args.model)
        answer = {"role": "assistant", "content": a.text, "model": args.model}
        idx = convs.append(c.id, [{"role": "user", "content": prompt}], answer)
        if "owl" in a.text.lower():
            convs.feedback(c.id, idx, rating=1)
            liked += 1
        else:
            better = f"{a.text.strip()} Owls, by the way, would love it too."
            convs.feedback(c.id, idx, rating=-1, better=better)
    print(
        f"{len(prompts)} conversations with {args.model}: {liked} answers liked, "
        f"{len(prompts) - liked} improved"
    )


if __name__ == "__main__":
    main()
