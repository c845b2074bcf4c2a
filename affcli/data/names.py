"""Object classes and affordance names of the three datasets, in the orders their files use."""

from __future__ import annotations

# The 23 object classes of PIAD / LASO / AGPIL (PIAD capitalisation; LASO stores them lower-case).
OBJECT_CLASSES: tuple[str, ...] = (
    "Bag", "Bed", "Bowl", "Clock", "Dishwasher", "Display", "Door", "Earphone", "Faucet",
    "Hat", "StorageFurniture", "Keyboard", "Knife", "Laptop", "Microwave", "Mug",
    "Refrigerator", "Chair", "Scissors", "Table", "TrashCan", "Vase", "Bottle",
)

# Column order of the 17 affordance scores in PIAD / AGPIL point files.
PIAD_AFFORDANCES: tuple[str, ...] = (
    "grasp", "contain", "lift", "open", "lay", "sit", "support", "wrapgrasp", "pour",
    "move", "display", "push", "listen", "wear", "press", "cut", "stab",
)

# LASO's 18 affordances, in the order of its reference loader (adds `pull`, spells wrap_grasp).
LASO_AFFORDANCES: tuple[str, ...] = (
    "lay", "sit", "support", "grasp", "lift", "contain", "open", "wrap_grasp", "pour",
    "move", "display", "push", "pull", "listen", "wear", "press", "cut", "stab",
)

# PIAD/AGPIL Unseen: these classes appear only in the test split.
PIAD_UNSEEN_TEST_CLASSES: tuple[str, ...] = (
    "Bed", "Dishwasher", "Microwave", "Scissors", "Vase", "Laptop",
)

_CLASS_BY_LOWER = {c.lower(): c for c in OBJECT_CLASSES}


def canonical_class(name: str) -> str | None:
    """The canonical spelling of an object class, matched case-insensitively; None if unknown."""
    return _CLASS_BY_LOWER.get(name.strip().lower())


def laso_affordance(piad_name: str) -> str:
    """LASO's spelling of a PIAD affordance name."""
    return "wrap_grasp" if piad_name == "wrapgrasp" else piad_name
