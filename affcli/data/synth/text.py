"""Templated language for the synthetic sets: LASO questions and AGPIL instructions."""

from __future__ import annotations

import re

import numpy as np

# affordance -> (verb phrase taking the object, gerund, purpose clause)
_AFFORDANCE_WORDS: dict[str, tuple[str, str, str]] = {
    "grasp": ("grasp", "grasping", "to pick it up"),
    "contain": ("put things into", "holding contents", "to store something in it"),
    "lift": ("lift", "lifting", "to raise it off the ground"),
    "open": ("open", "opening", "to open it"),
    "lay": ("lie down on", "lying down", "to lie down"),
    "sit": ("sit on", "sitting", "to take a seat"),
    "support": ("rest things on", "supporting weight", "to place items on it"),
    "wrapgrasp": ("wrap a hand around", "wrap-grasping", "to hold it firmly in the palm"),
    "pour": ("pour from", "pouring", "to pour its contents out"),
    "move": ("move", "moving", "to shift it somewhere else"),
    "display": ("look at", "displaying images", "to watch what it shows"),
    "push": ("push", "pushing", "to push it"),
    "pull": ("pull", "pulling", "to pull it towards me"),
    "listen": ("listen with", "listening", "to hear sound"),
    "wear": ("wear", "wearing", "to put it on"),
    "press": ("press", "pressing", "to press its buttons"),
    "cut": ("cut with", "cutting", "to slice something"),
    "stab": ("stab with", "stabbing", "to pierce something"),
}

_QUESTION0 = "Which part of the {obj} can I use for {ing}?"
_REPHRASINGS = (
    "Where would you {verb} the {obj}?",
    "Point out the region of the {obj} used {purpose}.",
    "If I want {purpose}, which area of this {obj} should I use?",
    "Show me where a person can {verb} this {obj}.",
    "Which region of the {obj} affords {ing}?",
    "Highlight the part of the {obj} suited to {ing}.",
    "Where on the {obj} is it possible to {verb} it?",
    "To {verb} the {obj}, which part should I interact with?",
    "Which portion of this {obj} would a robot use {purpose}?",
    "Can you locate the area of the {obj} designed for {ing}?",
    "Where should I make contact with the {obj} {purpose}?",
    "What segment of the {obj} is right for {ing}?",
    "Find the place on the {obj} that lets you {verb} it.",
    "Which surface of the {obj} is meant for {ing}?",
)

_INSTRUCTIONS = (
    "Please {verb} the {obj}.",
    "{Verb} the {obj} {purpose}.",
    "I need you to {verb} this {obj}.",
    "Use the {obj}: {verb} it {purpose}.",
    "Go ahead and {verb} the {obj} like the person in the picture.",
    "Can you {verb} the {obj} for me?",
)


def object_words(object_class: str) -> str:
    """'StorageFurniture' -> 'storage furniture'."""
    return re.sub(r"(?<!^)(?=[A-Z])", " ", object_class).lower()


def _fill(template: str, object_class: str, affordance: str) -> str:
    verb, ing, purpose = _AFFORDANCE_WORDS[affordance]
    text = template.format(obj=object_words(object_class), verb=verb, ing=ing, purpose=purpose,
                           Verb=verb[0].upper() + verb[1:])
    # "lie down on it" reads oddly after "to ... it": drop a doubled pronoun.
    return text.replace(" it it", " it")


def questions(object_class: str, affordance: str) -> list[str]:
    """The 15 LASO questions for a pair: Question0 canonical, then 14 rephrasings."""
    return [_fill(t, object_class, affordance) for t in (_QUESTION0, *_REPHRASINGS)]


def instruction(object_class: str, affordance: str, rng: np.random.Generator) -> str:
    """One AGPIL-style instruction, picked at random among the templates."""
    template = _INSTRUCTIONS[int(rng.integers(len(_INSTRUCTIONS)))]
    return _fill(template, object_class, affordance)
