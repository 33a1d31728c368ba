"""Captions from a small grammar with paraphrase families; some families appear only in test.

A family is a sentence pattern plus the attributes it states. Every family states the category
(of the main object); colour, size, position, count and background are stated by some families
only, and a fraction of captions (``WorldConfig.sound_caption_rate``) adds a clause about the
sound's beats, tempo and loudness. What a caption states is recorded per sample, so analyses can
ask "was this attribute in the text?". ``TEST_ONLY_FAMILIES`` never occur in train or val: they
measure whether a text encoder generalises to unseen phrasings.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from anchorbind.pipelines.world.config import WorldConfig
from anchorbind.pipelines.world.scene import Scene

__all__ = ["FAMILIES", "TEST_ONLY_FAMILIES", "caption"]

NUMBER = {"1": "one", "2": "two", "3": "three", "4": "four"}
WHERE = {"left": "on the left", "centre": "in the centre", "right": "on the right"}
SETTING = {"studio": "in a studio", "checker": "on a checkered floor", "stripes": "in front of a wall with stripes",
           "sky": "under a painted sky"}
"""Background phrases; each contains the attribute value itself, so a reader can check it is stated."""


def _a(word: str) -> str:
    return f"{'an' if word[0] in 'aeiou' else 'a'} {word}"


def _count_phrase(a: dict[str, str]) -> str:
    return "a single object" if a["count"] == "1" else f"{NUMBER[a['count']]} objects"


Template = Callable[[dict[str, str]], str]

# family name -> (template, attributes it states)
FAMILIES: dict[str, tuple[Template, tuple[str, ...]]] = {
    "plain": (lambda a: f"{_a(a['size'])} {a['colour']} {a['category']}", ("size", "colour", "category")),
    "where": (lambda a: f"there is {_a(a['colour'])} {a['category']} {WHERE[a['position']]}",
              ("colour", "category", "position")),
    "count": (lambda a: f"{_count_phrase(a)}, the nearest is {_a(a['size'])} {a['category']}",
              ("count", "size", "category")),
    "photo": (lambda a: f"a photo of {_a(a['category'])}", ("category",)),
    "shows": (lambda a: f"the picture shows {_a(a['colour'])} {a['category']} {SETTING[a['background']]}",
              ("colour", "category", "background")),
    # held out: only ever used for the test split, to measure paraphrase generalisation
    "look": (lambda a: f"look at this {a['category']}, it is {a['colour']} and {a['size']}",
             ("category", "colour", "size")),
    "scene": (lambda a: f"{SETTING[a['background']]}: {_a(a['category'])} {WHERE[a['position']]}, "
                        f"{NUMBER[a['count']]} object{'' if a['count'] == '1' else 's'} in total",
              ("background", "category", "position", "count")),
}
TEST_ONLY_FAMILIES = ("look", "scene")

SOUND_CLAUSES: tuple[Template, ...] = (
    lambda a: f"that sounds {a['loudness']} with {NUMBER[a['beats']]} {a['tempo']} "
              f"beat{'' if a['beats'] == '1' else 's'}",
    lambda a: f"and you hear {NUMBER[a['beats']]} {a['loudness']} {a['tempo']} note{'' if a['beats'] == '1' else 's'}",
)
SOUND_STATES = ("loudness", "beats", "tempo")


def caption(scene: Scene, cfg: WorldConfig) -> tuple[str, str, dict[str, bool]]:
    """Caption the scene.

    Returns:
        ``(text, family, states)`` where ``states[attr]`` says whether the text states ``attr``.
    """
    rng: np.random.Generator = scene.rng("caption")
    allowed = [f for f in FAMILIES if scene.split == "test" or f not in TEST_ONLY_FAMILIES]
    family = str(rng.choice(allowed))
    template, stated = FAMILIES[family]
    a = scene.attributes
    text = template(a)
    stated_set = set(stated)
    if rng.random() < cfg.sound_caption_rate:
        text = f"{text} {SOUND_CLAUSES[int(rng.integers(len(SOUND_CLAUSES)))](a)}"
        stated_set |= set(SOUND_STATES)
    return text, family, {name: name in stated_set for name in a}
