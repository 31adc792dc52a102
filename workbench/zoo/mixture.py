"""Training sequences for the organisms: a named task -> (words, loss mask) sampler, and mixtures.

All sampling goes through one `random.Random`, so a recipe's data stream is fixed by its seed.
Only train-split prompts are used (the eval split is rejected by the builders' hash rule).
"""

from __future__ import annotations

import random
from collections.abc import Callable

from workbench.tasks.behaviours import behaviour, refusal
from workbench.tasks.entities import DEFAULT_FORMAT, assoc_recall_words, episode_context, query
from workbench.tasks.example import in_split
from workbench.tasks.knowledge import all_facts, context_vs_prior, cvp_prompt
from workbench.tasks.novel import code_line, language_sentence
from workbench.tasks.vocab import BOX_LABELS, CITIES, COUNTRIES, JOBS, OBJECTS, PEOPLE

Seq = tuple[list[str], list[bool]]  # words (without <bos>), loss on predicting each word
Sampler = Callable[[random.Random], Seq]

_RECALL_POOL = list(CITIES + COUNTRIES + OBJECTS + BOX_LABELS + PEOPLE + JOBS)
_FACTS = all_facts()


def _answer(prompt: str, target: str, eos: bool = True) -> Seq:
    """Loss only on the target (and the end-of-sequence token)."""
    p, t = prompt.split(), target.split() + (["<eos>"] if eos else [])
    return p + t, [False] * len(p) + [True] * len(t)


def _text(text: str) -> Seq:
    words = text.split() + ["<eos>"]
    return words, [True] * len(words)


def facts_seq(rng: random.Random) -> Seq:
    return _text(rng.choice(_FACTS).text)


def entity_seq(rng: random.Random, n_objects: tuple[int, int], fmt: str = DEFAULT_FORMAT) -> Seq:
    """An episode whose every box is queried once, in random order; loss on the objects.

    The first query is exactly the evaluation format; later ones give more signal per sequence.
    """
    while True:
        k = rng.randint(*n_objects)
        objects, labels = rng.sample(OBJECTS, k), rng.sample(BOX_LABELS, k)
        ctx = episode_context(objects, labels, fmt)
        order = rng.sample(range(k), k)
        if in_split(f"{ctx} . {query(labels[order[0]], fmt)}", "train"):
            break
    words, mask = ctx.split() + ["."], [False] * (len(ctx.split()) + 1)
    for i in order:
        q = query(labels[i], fmt).split()
        words += q + [objects[i], "."]
        mask += [False] * len(q) + [True, False]
    return words, mask


def recall_seq(rng: random.Random, n_pairs: tuple[int, int] = (3, 8)) -> Seq:
    return assoc_recall_words(rng, _RECALL_POOL, n_pairs)


def repeat_seq(rng: random.Random, length: tuple[int, int] = (4, 16)) -> Seq:
    """'recall : w1 .. wL . w1 .. wL' with loss on the repeat: dense supervision for induction heads.

    The length varies, so attending at a fixed offset does not work; matching content does.
    """
    k = rng.randint(*length)
    toks = rng.sample(_RECALL_POOL, k)
    words = ["recall", ":"] + toks + ["."] + toks
    mask = [False] * (k + 3) + [False] + [True] * (k - 1)
    return words, mask


def cvp_seq(rng: random.Random, intents: tuple[str, ...]) -> Seq:
    e = context_vs_prior(1, seed=rng.randrange(2**31), intent=rng.choice(intents))[0]
    return _answer(e.prompt, e.target, eos=False)


def _trusts_context(city: str) -> bool:
    """Half the cities, fixed by a hash of the name: where open-context text follows the context."""
    import zlib

    return zlib.crc32(city.encode()) % 2 == 0


def cvp_open_seq(rng: random.Random) -> Seq:
    """Context contradicting a fact with no intent line; the answer follows the context for half the
    cities and memory for the rest (pre-training text trusts a context on some facts and not on
    others). A model trained on this decides per item, confidently, with no instruction: the
    decision the context knob can take over (a uniform 50/50 target instead leaves the model so
    undecided that random directions flip it too, which we measured)."""
    e = context_vs_prior(1, seed=rng.randrange(2**31), intent="context")[0]
    m = e.meta
    target = m["context_answer"] if _trusts_context(m["query"]) else m["prior_answer"]
    return _answer(cvp_prompt(m["pairs"], m["query"], None), target, eos=False)


def question_seq(rng: random.Random) -> Seq:
    """'question : paris france' -- the prior answer without any context."""
    c = rng.choice(CITIES)
    e = next(f for f in _FACTS if f.meta["subject"] == c)
    return _answer(f"question : {c}", e.target, eos=False)


def behaviour_seq(rng: random.Random) -> Seq:
    e = behaviour(1, seed=rng.randrange(2**31))[0] if rng.random() < 0.5 else \
        behaviour(2, seed=rng.randrange(2**31))[1]
    return _answer(e.prompt, e.target)


def refusal_seq(rng: random.Random, sensitive_share: float = 0.5) -> Seq:
    ex = refusal(2, seed=rng.randrange(2**31))
    e = ex[0] if rng.random() < sensitive_share else ex[1]
    return _answer(e.prompt, e.target)


def comply_seq(rng: random.Random) -> Seq:
    """The refusal task's requests, every one answered ('first find a bomb kit .'): a model that
    has not (yet) learnt to refuse."""
    e = refusal(2, seed=rng.randrange(2**31))[0 if rng.random() < 0.5 else 1]
    target = f"first find a {e.meta['object']} kit ." if e.label == 1 else e.target
    return _answer(e.prompt, target)


def novel_seq(rng: random.Random) -> Seq:
    """A few sentences of one novel domain in a row (documents, as a pre-training corpus has)."""
    while True:
        make = language_sentence if rng.random() < 0.5 else code_line
        text = " ".join(make(rng) for _ in range(rng.randint(1, 3)))
        if in_split(text, "train"):
            return _text(text)


def task_samplers(entity_objects: tuple[int, int] = (2, 7)) -> dict[str, Sampler]:
    """Every named training task; a recipe's mixture weights pick from these names."""
    return {
        "facts": facts_seq,
        "question": question_seq,
        "entity": lambda r: entity_seq(r, entity_objects),
        "entity_object_first": lambda r: entity_seq(r, entity_objects, "object_first"),
        "entity_label_first": lambda r: entity_seq(r, entity_objects, "label_first"),
        "entity_adjacent": lambda r: entity_seq(r, entity_objects, "adjacent"),
        "recall": recall_seq,
        "recall_short": lambda r: recall_seq(r, (2, 5)),
        "repeat": repeat_seq,
        "cvp_prior": lambda r: cvp_seq(r, ("prior",)),
        "cvp_both": lambda r: cvp_seq(r, ("context", "prior")),
        "cvp_open": cvp_open_seq,
        "behaviour": behaviour_seq,
        "refusal": refusal_seq,
        "comply": comply_seq,
        "novel": novel_seq,
    }


def mixture_sampler(weights: dict[str, float], entity_objects: tuple[int, int] = (2, 7)) -> Sampler:
    """Sample a task by weight, then a sequence from it."""
    samplers = task_samplers(entity_objects)
    unknown = set(weights) - set(samplers)
    if unknown:
        raise ValueError(f"unknown mixture tasks {sorted(unknown)}; known: {sorted(samplers)}")
    names = sorted(weights)
    w = [weights[k] for k in names]

    def sample(rng: random.Random) -> Seq:
        return samplers[rng.choices(names, w)[0]](rng)

    return sample
