"""Captions from a small grammar with paraphrase families; some families appear only in test.

Every caption states the category; colour, size, position, count and — in a fraction of
captions — the sound's beats, tempo and loudness are stated by some families only. What a
caption states is recorded, so analyses can ask "was this attribute in the text?".
"""

from __future__ import annotations

import numpy as np

from pipelines.world.config import WorldConfig
from pipelines.world.scene import Scene

__all__ = ["FAMILIES", "TEST_ONLY_FAMILIES", "caption"]

NUMBER = {"1": "one", "2": "two", "3": "three", "4": "four"}

# family name -> (template, attributes it states)
FAMILIES: dict[str, tuple[str, tuple[str, ...]]] = {
    "plain": ("a {size} {colour} {category}", ("size", "colour", "category")),
    "where": ("there is a {colour} {category} on the {position}", ("colour", "category", "position")),
    "count": ("{count_word} object{plural}, the biggest is a {size} {category}", ("count", "size", "category")),
    "photo": ("a photo of a {category}", ("category",)),
    "shows": ("the picture shows a {colour} {category}", ("colour", "category")),
    # held out: only ever used for the test split, to test paraphrase generalisation
    "look": ("look at this {category}, it is {colour}", ("category", "colour")),
    "scene": ("a scene with a {size} {category} and {count_word} object{plural} in total",
              ("size", "category", "count")),
}
TEST_ONLY_FAMILIES = ("look", "scene")
SOUND_CLAUSE = ("that sounds {loudness} with {beats_word} {tempo} beat{beats_plural}", ("loudness", "beats", "tempo"))


def caption(scene: Scene, cfg: WorldConfig) -> tuple[str, str, dict[str, bool]]:
    """``(text, family, states)`` where ``states[attr]`` says whether the text states ``attr``."""
    rng: np.random.Generator = scene.rng("caption")
    allowed = [f for f in FAMILIES if scene.split == "test" or f not in TEST_ONLY_FAMILIES]
    family = str(rng.choice(allowed))
    template, stated = FAMILIES[family]
    a = scene.attributes
    fields = {**a, "count_word": NUMBER[a["count"]], "plural": "" if a["count"] == "1" else "s",
              "beats_word": NUMBER[a["beats"]], "beats_plural": "" if a["beats"] == "1" else "s"}
    text = template.format(**fields)
    stated_set = set(stated)
    if rng.random() < cfg.sound_caption_rate:
        clause, sound_stated = SOUND_CLAUSE
        text = f"{text} {clause.format(**fields)}"
        stated_set |= set(sound_stated)
    return text, family, {name: name in stated_set for name in a}
