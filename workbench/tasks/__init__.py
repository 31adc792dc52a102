"""The procedurally generated world: vocabulary, tokenizer, dataset builders, judges, metrics.

Every builder is `fn(n, *, seed, split="train"|"eval", ...) -> list[Example]`; the eval
split holds prompts the organisms never trained on (see `example.in_split`).
"""

from workbench.tasks.behaviours import behaviour, refusal
from workbench.tasks.entities import entity_tracking
from workbench.tasks.example import Example
from workbench.tasks.judges import is_refusal, is_toxic, novel_domain
from workbench.tasks.knowledge import context_vs_prior, facts
from workbench.tasks.lm import HFLM, greedy_generate
from workbench.tasks.novel import novel
from workbench.tasks.tokenizer import build_tokenizer
from workbench.tasks.vocab import NOVEL_DOMAINS, TOXIC_LEXICON

__all__ = [
    "HFLM", "NOVEL_DOMAINS", "TOXIC_LEXICON", "Example", "behaviour", "greedy_generate", "build_tokenizer", "context_vs_prior",
    "entity_tracking", "facts", "is_refusal", "is_toxic", "novel", "novel_domain", "refusal",
]
