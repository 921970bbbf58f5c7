"""Everyday user requests (templates × subjects) for experiments that need ordinary chat prompts.

Subjects are split into disjoint parts by a fixed hash, so prompts used for training, for later training
(safety data) and for evaluation never share a subject.
"""

from __future__ import annotations

import random
import zlib

TEMPLATES = [
    "Give me one practical tip about {}.",
    "Write one sentence about {}.",
    "What is {}?",
    "Explain {} to a ten-year-old.",
    "Name two interesting facts about {}.",
    "Why do people care about {}?",
    "Describe {} in a few words.",
    "What should a beginner know about {}?",
]

SUBJECTS = """
the ocean, bicycles, coffee, volcanoes, the moon, honeybees, chess, rainbows, bread baking, the piano,
recycling, thunderstorms, deserts, penguins, the internet, gardening, tea, mountains, electricity, libraries,
sleep, dinosaurs, photosynthesis, trains, the human heart, jazz, origami, glaciers, owls, soccer, maps,
cheese, the stock market, vaccines, rivers, clouds, fireworks, poetry, the alphabet, bridges, rice, whales,
wind turbines, chocolate, museums, the color blue, snow, ants, airplanes, mushrooms, the Roman Empire,
painting, salt, forests, telescopes, yoga, bees' wax, swimming, the periodic table, tomatoes, camping,
elephants, lighthouses, knitting, robots, the Sahara, earthquakes, spiders, microscopes, marathons, olive oil,
the violin, coral reefs, tigers, cartography, umbrellas, bamboo, the printing press, solar panels, frogs,
kites, bananas, the Great Wall, hiking, dolphins, clocks, sunflowers, pottery, satellites, butterflies,
maple syrup, submarines, sushi, the Amazon rainforest, skateboards, newspapers, hurricanes, zebras, candles,
magnets, the Eiffel Tower, honey, rockets, cats, dogs, bread, mathematics, typewriters, the Arctic, carrots,
lanterns, sailing, parrots, gravity, cotton, windmills, compasses, the postal service, igloos, lemons
"""


def subjects() -> list[str]:
    return [s.strip() for s in SUBJECTS.replace("\n", " ").split(",") if s.strip()]


def user_prompts(
    n: int, part: str, seed: int = 0, parts: tuple[str, ...] = ("train", "safety", "eval")
) -> list[str]:
    """``n`` distinct prompts whose subjects lie in ``part`` (one of ``parts``, split by crc32 of the
    subject)."""
    if part not in parts:
        raise ValueError(f"part must be one of {parts}, got {part!r}")
    mine = [s for s in subjects() if zlib.crc32(s.encode()) % len(parts) == parts.index(part)]
    pool = [t.format(s) for s in mine for t in TEMPLATES]
    if n > len(pool):
        raise ValueError(f"{n} prompts asked from part {part!r}, which has {len(pool)}; ask for fewer")
    return random.Random(seed).sample(pool, n)
