"""From-scratch Llama-architecture models with a byte-level tokenizer, for tests and pretraining."""

from __future__ import annotations

from dataclasses import dataclass

from tokenizers import Tokenizer, decoders, models, pre_tokenizers
from transformers import LlamaConfig, PreTrainedTokenizerFast

SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
CHATML = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>\n' }}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)


@dataclass(frozen=True)
class TinyPreset:
    hidden: int
    layers: int
    heads: int
    kv_heads: int
    intermediate: int
    context: int


PRESETS: dict[str, TinyPreset] = {
    "micro": TinyPreset(hidden=32, layers=2, heads=2, kv_heads=2, intermediate=64, context=256),
    "small": TinyPreset(hidden=128, layers=4, heads=4, kv_heads=4, intermediate=384, context=512),
    "base": TinyPreset(hidden=256, layers=6, heads=8, kv_heads=4, intermediate=768, context=1024),
}


def byte_tokenizer() -> PreTrainedTokenizerFast:
    """A byte-level tokenizer (256 byte tokens + ChatML specials): every string encodes, nothing to train."""
    alphabet = pre_tokenizers.ByteLevel.alphabet()
    vocab = {ch: i for i, ch in enumerate(sorted(alphabet, key=lambda c: _byte_of(c)))}
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    tok.decoder = decoders.ByteLevel()
    tok.add_special_tokens(SPECIALS)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        bos_token=None,
        unk_token=None,
    )
    fast.chat_template = CHATML
    return fast


def tiny_config(preset: str, vocab_size: int) -> LlamaConfig:
    # the byte tokenizer appends its specials last: <|endoftext|>, <|im_start|>, <|im_end|>
    return llama_config(PRESETS[preset], vocab_size, eos_id=vocab_size - 1, pad_id=vocab_size - 3)


def llama_config(p: TinyPreset, vocab_size: int, eos_id: int, pad_id: int) -> LlamaConfig:
    """A Llama config with tied embeddings from a shape (a preset or any ``TinyPreset``)."""
    return LlamaConfig(
        vocab_size=vocab_size,
        hidden_size=p.hidden,
        intermediate_size=p.intermediate,
        num_hidden_layers=p.layers,
        num_attention_heads=p.heads,
        num_key_value_heads=p.kv_heads,
        max_position_embeddings=p.context,
        tie_word_embeddings=True,
        bos_token_id=None,
        eos_token_id=eos_id,
        pad_token_id=pad_id,
    )


def train_bpe(texts, vocab_size: int, min_frequency: int = 2) -> PreTrainedTokenizerFast:
    """Train a byte-level BPE (GPT-2 style pre-split, 256 byte symbols, ChatML specials at ids 0-2) on
    ``texts``.

    Every string round-trips: unseen characters fall back to their UTF-8 bytes."""
    from tokenizers import trainers

    if vocab_size < 256 + len(SPECIALS):
        raise ValueError(f"vocab_size {vocab_size} is below the 256 byte symbols + {len(SPECIALS)} specials")
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=min_frequency,
        special_tokens=SPECIALS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(texts, trainer=trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        bos_token=None,
        unk_token=None,
    )
    fast.chat_template = CHATML
    return fast


def _byte_of(ch: str) -> int:
    table = _bytes_to_unicode()
    return {v: k for k, v in table.items()}[ch]


def _bytes_to_unicode() -> dict[int, str]:
    bs = (
        list(range(ord("!"), ord("~") + 1))
        + list(range(ord("¡"), ord("¬") + 1))
        + list(range(ord("®"), ord("ÿ") + 1))
    )
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, map(chr, cs), strict=True))
