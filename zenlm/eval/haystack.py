"""Synthetic filler prose for the needle task: our own sentence templates and word lists, no borrowed text.

sentences() is one fixed, endless-looking stream (a seeded generator, the same on every machine and
Python 3), read from the start as far as a prompt needs; paragraphs() groups a prefix of it into
paragraphs. The prose is plausible but says nothing: quiet scenes of towns, rivers, workshops and
weather. It holds no digits and no place names, so a needle's key and number stand out only by
meaning, never by form.
"""

from __future__ import annotations

import random

SEED = "zenlm-needle-haystack-v1"

WORDS = {
    "person": ["the old ferryman", "a young carpenter", "the schoolteacher", "a travelling tinker", "the baker",
               "the miller's daughter", "a retired sailor", "the night watchman", "a quiet bookbinder",
               "the village doctor", "a shepherd", "the weaver", "a visiting painter", "the harbour master",
               "the innkeeper", "a clockmaker", "the gardener", "a letter carrier", "the potter", "a beekeeper"],
    "people": ["the fishermen", "the children", "the farmers", "the market women", "the apprentices",
               "the pilgrims", "the musicians", "the stonemasons", "the students", "the neighbours"],
    "place": ["the harbour", "the upper valley", "the market square", "the mill", "the orchard", "the old bridge",
              "the chapel on the hill", "the salt marsh", "the library", "the boatyard", "the forest edge",
              "the lighthouse", "the tannery lane", "the meadow", "the railway cutting", "the bakery"],
    "thing": ["lantern", "wheelbarrow", "fishing net", "ledger", "copper kettle", "woollen blanket", "map",
              "rowing boat", "weather vane", "basket of apples", "loom", "ladder", "bell", "barrel of cider",
              "sketchbook", "violin", "cart", "garden gate", "clock", "stack of letters"],
    "adj": ["weathered", "narrow", "bright", "crooked", "patient", "heavy", "faded", "careful", "restless",
            "silent", "generous", "stubborn", "gentle", "battered", "tidy", "curious"],
    "season": ["early spring", "the long summer", "late autumn", "the first weeks of winter", "the rainy season",
               "harvest time", "the dry months", "midwinter"],
    "time": ["dawn", "midmorning", "noon", "the late afternoon", "dusk", "nightfall", "the small hours"],
    "weather": ["a thin rain", "a steady wind from the sea", "a heavy fog", "clear cold air", "a slow thunderstorm",
                "warm still air", "a light snow", "low grey cloud"],
    "verb": ["repair", "paint", "count", "carry", "sort", "mend", "polish", "gather", "measure", "clean", "tend",
             "stack"],
    "past": ["repaired", "painted", "counted", "carried", "sorted", "mended", "polished", "gathered", "measured",
             "cleaned", "tended", "stacked"],
    "idea": ["patience", "habit", "memory", "craft", "luck", "kindness", "attention", "routine", "silence",
             "practice", "weather", "trust"],
    "feeling": ["content", "tired", "hopeful", "uneasy", "amused", "thoughtful", "calm", "proud"],
    "sound": ["the gulls", "a distant bell", "the river", "a barking dog", "the wind in the chimneys",
              "a cart on the cobbles", "the church clock", "a kettle"],
}

TEMPLATES = [
    "In {season}, {people} would meet near {place} to {verb} the {thing} before {time}.",
    "{Person} once said that {idea} matters more than {idea2}, and few in the town disagreed.",
    "By {time} {weather} had settled over {place}, and {person} decided to stay indoors.",
    "Nobody could remember who first {past} the {adj} {thing} that still stands beside {place}.",
    "{Person} kept a {adj} {thing} by the door and {past} it every week without fail.",
    "The walk from {place} to {place2} takes most of a morning if the path is muddy.",
    "During {season} the sound of {sound} carried all the way to {place}.",
    "It is said that {idea} grows slowly, like moss on the stones of {place}.",
    "{People} argued for a while about the {thing}, then went home feeling {feeling}.",
    "When {weather} came in, {person} {past} the {thing} and waited for it to pass.",
    "There was a {adj} {thing} in the window of the shop near {place}, and children stopped to look at it.",
    "{Person} believed that a day spent in {place} was never wasted, whatever the weather.",
    "At {time} {person} could be found at {place}, listening to {sound}.",
    "Most years {people} {past} the {thing} together, which left everyone {feeling} but hungry.",
    "The letters from {place} spoke mostly of {idea}, with a word or two about {weather}.",
    "Some visitors found the town {adj}, while others thought it simply needed more {idea}.",
    "{Person} learned early that {idea} cannot be hurried, a lesson {people} learned much later.",
    "A {adj} path leads from {place} down to {place2}, past hedges that are cut only in {season}.",
    "In the evenings {person} would {verb} the {thing} by lamplight and hum an old tune.",
    "{People} still tell the story of the {adj} {thing} that went missing one {season}.",
    "Rain or shine, {person} walked to {place} at {time} and back again before supper.",
    "Whoever lives near {place} soon learns to tell {sound} from {sound2} in the dark.",
    "The council met in {place} to discuss the {thing}, though the talk soon turned to {idea}.",
    "Little changed at {place} from one year to the next, and that suited {people} well.",
]


def _fill(template: str, rng: random.Random) -> str:
    values = {}
    for key, choices in WORDS.items():
        first, second = rng.sample(choices, 2)
        values[key], values[key + "2"] = first, second
        values[key.capitalize()] = first[0].upper() + first[1:]
    return template.format(**values)


def sentences(n: int) -> tuple[str, ...]:
    """The first n sentences of the filler stream (the same prefix for every n)."""
    rng = random.Random(SEED)
    out, last = [], -1
    while len(out) < n:
        i = rng.randrange(len(TEMPLATES))
        if i == last:  # never the same template twice in a row
            continue
        out.append(_fill(TEMPLATES[i], rng))
        last = i
    return tuple(out)


def paragraph_breaks(n: int) -> list[bool]:
    """Whether sentence i (0 < i < n) starts a new paragraph: paragraphs of four to seven sentences."""
    rng = random.Random(SEED + "-paragraphs")
    breaks, left = [], rng.randint(4, 7)
    for i in range(n):
        start = i > 0 and left == 0
        if start:
            left = rng.randint(4, 7)
        breaks.append(start)
        left -= 1
    return breaks
