"""A tiny GPT-2-shaped base model built locally, for the demo and the tests.

Nothing is downloaded: a byte-level BPE tokenizer is trained on the given texts and a two-layer
GPT-2 is initialized at random, then both are saved with `save_pretrained`, so that fine-tuning
loads them through the same code as a real base model. It learns the texts it is trained on and
nothing else: a stand-in for a real base model, which users take from a local directory.
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence


def build_tiny_model(directory: Path, texts: Sequence[str], vocab_size: int = 400, seed: int = 0) -> Path:
    """Train a BPE tokenizer on `texts`, build a 2-layer GPT-2 with its vocabulary, and save both."""
    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import GPT2Config, GPT2LMHeadModel, PreTrainedTokenizerFast

    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size, special_tokens=["<|endoftext|>"], initial_alphabet=pre_tokenizers.ByteLevel.alphabet()
    )
    tokenizer.train_from_iterator(list(texts), trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tokenizer, eos_token="<|endoftext|>", bos_token="<|endoftext|>")
    eos = fast.eos_token_id
    # A wide initialization gives the random output layer logits large enough for LoRA to move. With
    # GPT-2's default of 0.02, the loss of a 32-wide model barely leaves log(vocabulary size).
    config = GPT2Config(
        vocab_size=len(fast), n_positions=128, n_embd=32, n_layer=2, n_head=2,
        bos_token_id=eos, eos_token_id=eos, initializer_range=0.2,
    )
    torch.manual_seed(seed)
    directory = Path(directory)
    GPT2LMHeadModel(config).save_pretrained(directory)
    fast.save_pretrained(directory)
    return directory
