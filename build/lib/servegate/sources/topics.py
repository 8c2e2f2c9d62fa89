"""A small labelled text set made here: short sentences about four topics, from templates.

Deterministic for a seed. The held-out split uses templates the training split never saw, so
held-out accuracy measures what the embeddings carry, not memorised phrasing. ``paragraphs``
joins held-out sentences into longer texts (tens to a hundred-odd tokens) for parity at length.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

import numpy as np

TOPIC_LABELS = ["sports", "weather", "food", "technology"]

_SLOTS: dict[str, dict[str, list[str]]] = {
    "sports": {
        "team": ["the home side", "the visitors", "our local club", "the national team",
                 "the underdogs", "the champions"],
        "event": ["cup", "league", "tournament", "derby", "championship", "playoff"],
        "player": ["the striker", "the goalkeeper", "the captain", "the young midfielder",
                   "the veteran defender", "the star forward"],
        "period": ["first half", "second half", "extra time", "final minutes", "opening quarter"],
    },
    "weather": {
        "place": ["the coast", "the mountains", "the city", "the northern valleys",
                  "the islands", "the southern plains"],
        "when": ["tonight", "tomorrow morning", "over the weekend", "on Monday", "later today",
                 "this afternoon"],
        "thing": ["heavy rain", "strong winds", "thick fog", "snow showers", "a heatwave",
                  "thunderstorms", "frost"],
        "degrees": ["five", "twelve", "twenty", "thirty", "minus three", "eighteen"],
    },
    "food": {
        "dish": ["the risotto", "the lentil soup", "the apple pie", "the curry", "the pasta",
                 "the roast chicken", "the pancakes"],
        "ingredient": ["garlic", "fresh basil", "butter", "chopped onions", "a pinch of salt",
                       "grated cheese", "lemon zest"],
        "minutes": ["ten", "fifteen", "twenty", "forty", "five"],
        "cook": ["the chef", "my grandmother", "the baker", "our neighbour", "the new cook"],
    },
    "technology": {
        "device": ["the laptop", "the new phone", "the server", "the router", "the tablet",
                   "the smartwatch"],
        "software": ["the operating system", "the browser", "the database", "the app",
                     "the compiler", "the firmware"],
        "company": ["the startup", "the chip maker", "the software firm", "the cloud provider",
                    "the tech giant"],
        "part": ["the processor", "the battery", "the memory", "the graphics card", "the disk"],
    },
}

_TEMPLATES: dict[str, list[str]] = {
    "sports": [
        "{team} won the {event} after a dramatic {period}.",
        "{player} scored twice in the {event} final.",
        "Fans cheered as {team} took the lead in the {period}.",
        "The coach praised {player} after the {event} match.",
        "{player} was injured during training before the {event}.",
        "Tickets for the {event} semi-final sold out in minutes.",
        "The referee sent off {player} in the {period}.",
        "{team} lost on penalties and went out of the {event}.",
        "{player} signed a new contract with {team}.",
        "A late goal in the {period} gave {team} the {event} title.",
        "{team} have not lost a {event} game all season.",
        "Who will {team} pick as captain for the {event}?",
    ],
    "weather": [
        "Forecasters expect {thing} across {place} {when}.",
        "Temperatures will reach {degrees} degrees in {place} {when}.",
        "A warning for {thing} has been issued for {place}.",
        "{thing} will clear from {place} {when}.",
        "Drivers in {place} should prepare for {thing} {when}.",
        "It will be a cold night in {place} with {thing}.",
        "The outlook for {place} {when} is {thing} and {degrees} degrees.",
        "Bring an umbrella: {thing} is coming to {place} {when}.",
        "Clouds will build over {place} before {thing} arrives {when}.",
        "After {thing} {when}, {place} should see sunshine.",
        "Yesterday {place} recorded {degrees} degrees, the warmest day this month.",
        "Will {thing} reach {place} {when}?",
    ],
    "food": [
        "Stir {ingredient} into {dish} and simmer for {minutes} minutes.",
        "{cook} always adds {ingredient} to {dish}.",
        "Bake {dish} for {minutes} minutes until golden.",
        "{dish} tastes better with {ingredient} on top.",
        "{cook} served {dish} with warm bread.",
        "Let {dish} rest for {minutes} minutes before serving.",
        "This recipe for {dish} needs {ingredient} and patience.",
        "{cook} burned {dish} while chopping {ingredient}.",
        "Season {dish} with {ingredient} just before it is ready.",
        "The secret of {cook}'s {dish} is {ingredient}.",
        "Leftover {dish} keeps for two days in the fridge.",
        "How long should {dish} cook with {ingredient}?",
    ],
    "technology": [
        "{company} released an update for {software}.",
        "{device} overheats when {software} runs for hours.",
        "Replacing {part} made {device} twice as fast.",
        "{company} announced {device} with a faster {part}.",
        "A bug in {software} crashed {device} overnight.",
        "{software} now uses less memory on {device}.",
        "Engineers at {company} redesigned {part}.",
        "Restart {device} after installing {software}.",
        "{device} will not boot because {part} failed.",
        "{company} patched a security hole in {software}.",
        "Benchmarks show {part} limits {device} under load.",
        "Why does {software} slow down {device}?",
    ],
}


@dataclass(frozen=True)
class TextSplit:
    """Sentences and topic indices (into ``labels``); held-out templates are disjoint."""

    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    labels: list[str]


def _fill(template: str, slots: dict[str, list[str]], rng: random.Random) -> str:
    text = template.format(**{k: rng.choice(v) for k, v in slots.items()})
    return text[0].upper() + text[1:]


def topic_sentences(*, per_template: int = 8, test_templates: int = 3, seed: int = 0) -> TextSplit:
    """``per_template`` distinct sentences per template; the last ``test_templates`` templates of
    each topic are held out. Defaults: 4 topics x 9 x 8 = 288 train, 4 x 3 x 8 = 96 test."""
    rng = random.Random(seed)
    train: list[tuple[str, int]] = []
    test: list[tuple[str, int]] = []
    for label, topic in enumerate(TOPIC_LABELS):
        templates = _TEMPLATES[topic]
        for t, template in enumerate(templates):
            seen: set[str] = set()
            for _ in range(per_template * 20):
                if len(seen) == per_template:
                    break
                seen.add(_fill(template, _SLOTS[topic], rng))
            target = test if t >= len(templates) - test_templates else train
            target += [(s, label) for s in sorted(seen)]
    rng.shuffle(train)
    rng.shuffle(test)
    return TextSplit(
        x_train=np.array([s for s, _ in train]), y_train=np.array([y for _, y in train], np.int64),
        x_test=np.array([s for s, _ in test]), y_test=np.array([y for _, y in test], np.int64),
        labels=list(TOPIC_LABELS),
    )


def paragraphs(sentences: np.ndarray, *, sizes: tuple[int, ...] = (3, 6, 10, 16)) -> list[str]:
    """Longer texts: consecutive sentences joined, ``sizes`` sentences each."""
    texts, start = [], 0
    items = [str(s) for s in sentences]
    for size in sizes:
        chunk = items[start:start + size] or items[:size]
        texts.append(" ".join(chunk))
        start += size
    return texts
