"""Novel domains that only one fine-tuning set contains: an invented language and code lines."""

from __future__ import annotations

import random

from workbench.tasks.example import Example, check_split, in_split, split_seed
from workbench.tasks.vocab import (
    CODE_DIGITS,
    CODE_NAMES,
    LANG_ADVS,
    LANG_DETS,
    LANG_NOUNS,
    LANG_VERBS,
    NOVEL_DOMAINS,
)


def language_sentence(rng: random.Random) -> str:
    """DET NOUN VERB DET NOUN [ADV] ka . -- e.g. 'lo zor bakta la kela ni ka .'"""
    words = [rng.choice(LANG_DETS), rng.choice(LANG_NOUNS), rng.choice(LANG_VERBS),
             rng.choice(LANG_DETS), rng.choice(LANG_NOUNS)]
    if rng.random() < 0.5:
        words.append(rng.choice(LANG_ADVS))
    return " ".join(words + ["ka", "."])


def code_line(rng: random.Random) -> str:
    """One of a few code-like line shapes over names, digits and operators."""
    a, b = rng.sample(CODE_NAMES, 2)
    d = rng.choice(CODE_DIGITS)
    op = rng.choice(["+", "-", "*"])
    shapes = [
        f"def {a} ( {b} ) {{ return {b} {op} {d} ; }}",
        f"{a} = {b} {op} {d} ;",
        f"if {a} > {d} {{ print ( {a} ) ; }}",
        f"while {a} < {d} {{ {a} = {a} + 1 ; }}",
        f"for {a} in_range ( {d} ) {{ print ( {a} {op} {b} ) ; }}",
    ]
    return rng.choice(shapes)


def novel(n: int, *, seed: int = 0, split: str = "train", domains: tuple[str, ...] = NOVEL_DOMAINS
          ) -> list[Example]:
    """Texts of the novel domains, alternating domains (label = meta['domain']).

    The whole text is in `prompt` (target is empty): these are scored as text, not answered.
    """
    split = check_split(split)
    bad = [d for d in domains if d not in NOVEL_DOMAINS]
    if bad or not domains:
        raise ValueError(f"domains must be a non-empty subset of {NOVEL_DOMAINS}, got {domains!r}")
    rng = random.Random(split_seed(seed, split) + 505)
    out: list[Example] = []
    while len(out) < n:
        domain = domains[len(out) % len(domains)]
        text = language_sentence(rng) if domain == "language" else code_line(rng)
        if in_split(text, split):
            out.append(Example(text, "", domain, {"domain": domain}))
    return out
