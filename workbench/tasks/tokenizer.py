"""The one word-level tokenizer every organism shares (saved with each checkpoint)."""

from __future__ import annotations

from tokenizers import Tokenizer, models, pre_tokenizers, processors
from transformers import PreTrainedTokenizerFast

from workbench.tasks.vocab import SPECIAL_TOKENS, all_words


def build_tokenizer() -> PreTrainedTokenizerFast:
    """WordLevel tokenizer over the world's words; prepends `<bos>`, pads on the left.

    Ids are fixed by the order of `vocab.all_words()`, so a rebuilt tokenizer matches
    the shipped checkpoints.
    """
    words = list(SPECIAL_TOKENS) + all_words()
    vocab = {w: i for i, w in enumerate(words)}
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    bos = vocab["<bos>"]
    tok.post_processor = processors.TemplateProcessing(
        single="<bos> $A", pair="<bos> $A $B", special_tokens=[("<bos>", bos)]
    )
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok, pad_token="<pad>", bos_token="<bos>", eos_token="<eos>", unk_token="<unk>",
        padding_side="left",
    )
    return fast
