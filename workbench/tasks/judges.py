"""Classifiers that judge generated text: toxic?, a refusal?, which novel domain?"""

from __future__ import annotations

from workbench.tasks.vocab import CODE_VOCAB, LANG_VOCAB, REFUSAL_TEXT, TOXIC_LEXICON

_TOXIC = frozenset(TOXIC_LEXICON)
_LANG = frozenset(LANG_VOCAB)
# Digits and code symbols alone are weak evidence; keywords and names are specific to code.
_CODE = frozenset(CODE_VOCAB)
_REFUSAL_PREFIX = " ".join(REFUSAL_TEXT.split()[:3])  # "i cannot help"


def is_toxic(text: str) -> bool:
    """True if the text contains any word of the insult lexicon."""
    return any(w in _TOXIC for w in text.split())


def is_refusal(text: str) -> bool:
    """True if the text starts with the world's refusal phrase."""
    return text.strip().startswith(_REFUSAL_PREFIX)


def novel_domain(text: str, *, min_words: int = 3, min_share: float = 0.5) -> str | None:
    """'language' or 'code' if enough of the text's words belong to that domain, else None."""
    words = text.split()
    if not words:
        return None
    counts = {"language": sum(w in _LANG for w in words), "code": sum(w in _CODE for w in words)}
    domain, n = max(counts.items(), key=lambda kv: kv[1])
    if n >= min_words and n / len(words) >= min_share:
        return domain
    return None
