"""The held-out split of real fusion pairs: one deterministic rule, by scene name, for every task.

A real scene is either a training scene or a held-out scene, for good: ``latentfuse data build``
writes only training scenes unless asked (``--split heldout|all``), the training data loader refuses a
held-out record, and the evaluation scripts score held-out scenes only. The rule looks at nothing but
the scene's own name, so a scene keeps its side when other scenes are added or removed, when the data
are read from another root folder (``vif/`` or ``vif/TNO/``), and on every machine:

    scene   the last component of the pair name (``RoadScene__FLIR_00211`` -> ``FLIR_00211``; an MEFB /
            MFIFB scene folder ``input/Arno/`` -> ``Arno``), lower-cased
    u       the first 8 bytes of sha256(scene), as an integer, divided by 2**64  (uniform in [0, 1))
    split   ``heldout`` when u < HELDOUT_FRACTION, else ``train``

Each scene is held out with probability ``HELDOUT_FRACTION`` independently of the others, so the held-out
share of a set of n scenes is about 20 % (binomial, not exactly n / 5). Synthetic pairs
(``latentfuse data synth``) are renders whose held-out pairs come from another seed: they are not split.
"""

from __future__ import annotations

import hashlib
from typing import Iterable, Sequence, TypeVar

from latentfuse.model.errors import LatentfuseError

HELDOUT_FRACTION = 0.2
SPLITS: tuple[str, ...] = ("train", "heldout", "all")
SCENE_SEPARATOR = "__"  # model.data.pairs joins the folders of a pair's relative path with it

T = TypeVar("T")


def check_split(split: str) -> str:
    """``split`` lower-cased, or a LatentfuseError naming the valid splits."""
    key = str(split).lower()
    if key not in SPLITS:
        raise LatentfuseError(f"unknown split {split!r}: expected one of {', '.join(SPLITS)}")
    return key


def scene_name(pair_name: str) -> str:
    """The scene a pair belongs to: the last component of its name, lower-cased (see module doc)."""
    name = str(pair_name).rsplit(SCENE_SEPARATOR, 1)[-1].strip().lower()
    if not name:
        raise LatentfuseError(f"pair name {pair_name!r} has no scene name to split by")
    return name


def scene_hash(pair_name: str) -> float:
    """A uniform number in [0, 1) that depends only on the scene name."""
    digest = hashlib.sha256(scene_name(pair_name).encode("utf-8")).digest()
    return int.from_bytes(digest[:8], "big") / 2.0**64


def split_of(pair_name: str) -> str:
    """``"heldout"`` or ``"train"`` for the scene of ``pair_name``."""
    return "heldout" if scene_hash(pair_name) < HELDOUT_FRACTION else "train"


def is_heldout(pair_name: str) -> bool:
    return split_of(pair_name) == "heldout"


def in_split(pair_name: str, split: str) -> bool:
    """Whether the scene of ``pair_name`` belongs to ``split`` (``all`` holds every scene)."""
    split = check_split(split)
    return split == "all" or split_of(pair_name) == split


def select(items: Iterable[T], split: str, name=lambda item: item.name) -> list[T]:
    """The items (pairs, records, ...) whose scene is in ``split``; ``name(item)`` gives the pair name."""
    split = check_split(split)
    return [item for item in items if in_split(name(item), split)]


def split_counts(names: Sequence[str]) -> dict[str, int]:
    """How many of ``names`` fall on each side: ``{"train": n, "heldout": m}``."""
    out = {"train": 0, "heldout": 0}
    for n in names:
        out[split_of(n)] += 1
    return out
