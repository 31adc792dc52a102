"""Entity tracking (boxes and objects) and the associative-recall co-training task."""

from __future__ import annotations

import random

from workbench.tasks.example import Example, check_split, in_split, split_seed
from workbench.tasks.vocab import BOX_LABELS, OBJECTS


def _n_range(n_objects: int | tuple[int, int]) -> tuple[int, int]:
    lo, hi = (n_objects, n_objects) if isinstance(n_objects, int) else n_objects
    if not 2 <= lo <= hi <= min(len(OBJECTS), len(BOX_LABELS)):
        raise ValueError(f"n_objects must be an int or (lo, hi) with 2 <= lo <= hi, got {n_objects!r}")
    return lo, hi


FORMATS = ("object_first", "label_first", "adjacent")
DEFAULT_FORMAT = "adjacent"


def episode_context(objects: list[str], labels: list[str], fmt: str = DEFAULT_FORMAT) -> str:
    """'box f contains the apple , box q contains the car' (label first), or the object-first
    'the apple is in box f , the car is in box q' of Prakash et al."""
    if fmt not in FORMATS:
        raise ValueError(f"fmt must be one of {FORMATS}, got {fmt!r}")
    if fmt == "object_first":
        return " , ".join(f"the {o} is in box {b}" for o, b in zip(objects, labels, strict=True))
    if fmt == "adjacent":
        return " , ".join(f"box {b} {o}" for o, b in zip(objects, labels, strict=True))
    return " , ".join(f"box {b} contains the {o}" for o, b in zip(objects, labels, strict=True))


def query(label: str, fmt: str = DEFAULT_FORMAT) -> str:
    """The question after the context: 'box f contains the' ('box f' in the adjacent format)."""
    return f"box {label}" if fmt == "adjacent" else f"box {label} contains the"


def _positions(prompt: str, objects: list[str], labels: list[str]) -> dict:
    """Token positions of the key words (word index + 1 for `<bos>`); the question follows the last '.'."""
    words = prompt.split()
    q_start = len(words) - 1 - words[::-1].index(".")
    ctx = words[:q_start]
    return {
        "object_positions": [ctx.index(o) + 1 for o in objects],
        "label_positions": [max(i for i, w in enumerate(ctx) if w == b and ctx[i - 1] == "box") + 1 for b in labels],
        "query_label_position": q_start + 3,  # '. box L ...': the label is two words after the '.'
        "last_position": len(words),
    }


def entity_tracking(
    n: int, *, seed: int = 0, split: str = "train", n_objects: int | tuple[int, int] = (2, 7),
    fmt: str = DEFAULT_FORMAT,
) -> list[Example]:
    """'box f apple , box q car . box f' -> 'apple' (or another `fmt`, see `episode_context`).

    n_objects is cycled evenly over its range so per-size accuracy has equal support.
    meta: objects, labels (in order), query_label, query_index, n_objects, chance (1/n_objects),
    format, and token positions (counting `<bos>` as 0, no padding): `object_positions`,
    `label_positions` (each label's mention in the context), `query_label_position` (the label
    in the question) and `last_position`.
    """
    split = check_split(split)
    lo, hi = _n_range(n_objects)
    rng = random.Random(split_seed(seed, split) + 202)
    out: list[Example] = []
    while len(out) < n:
        k = lo + len(out) % (hi - lo + 1)
        objects = rng.sample(OBJECTS, k)
        labels = rng.sample(BOX_LABELS, k)
        qi = rng.randrange(k)
        prompt = f"{episode_context(objects, labels, fmt)} . {query(labels[qi], fmt)}"
        if not in_split(prompt, split):
            continue
        meta = {"objects": objects, "labels": labels, "query_label": labels[qi], "query_index": qi,
                "n_objects": k, "chance": 1.0 / k, "format": fmt, **_positions(prompt, objects, labels)}
        out.append(Example(prompt, objects[qi], k, meta))
    return out


def assoc_recall_words(rng: random.Random, pool: list[str], n_pairs: tuple[int, int] = (4, 12)
                       ) -> tuple[list[str], list[bool]]:
    """Co-training sequence: 'recall : k1 v1 k2 v2 ... . k2 v2 k1 v1 ...' with loss on recalled values.

    Content-based recall (the key is matched, not its position) is what teaches the
    induction heads that binding and context copying reuse.
    """
    k = rng.randint(*n_pairs)
    toks = rng.sample(pool, 2 * k)
    keys, vals = toks[:k], toks[k:]
    words = ["recall", ":"]
    for a, b in zip(keys, vals, strict=False):
        words += [a, b]
    words.append(".")
    mask = [False] * len(words)
    for i in rng.sample(range(k), k):
        words += [keys[i], vals[i]]
        mask += [False, True]
    return words, mask
