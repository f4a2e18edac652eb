"""A tiny random causal LM with an offline-trained tokenizer, for tests and smoke runs.

``make_tiny_model(out_dir)`` writes a normal Hugging Face model folder (Llama architecture,
2 layers, hidden 64, byte-level BPE tokenizer trained in-process on a few arithmetic word
problems) in a second or two, with no network. Everything that loads a model by path (the
``base_model`` stage with ``source: local``, the sampler, fine-tuning) accepts it.
"""

from __future__ import annotations

from pathlib import Path

_CORPUS = [
    "Q: There are 15 trees in the grove. Grove workers will plant trees in the grove today. "
    "After they are done, there will be 21 trees. "
    "How many trees did the grove workers plant today?",
    "A: There are 15 trees originally. Then there were 21 trees after some more were planted. "
    "So there must have been 21 - 15 = 6. The answer is 6.",
    "Let's think step by step. The answer is 42. #### 42",
    "Jack has 5 stamps. Jack buys 1 more. How many stamps does Jack have now? 5 + 1 = 6.",
    "0 1 2 3 4 5 6 7 8 9 10 11 12 + - * / = $ , . ? ! : ( ) << >> \n\n Q: A:",
    "feedback: the answer is correct. refined answer: step wrong value correct",
]


def make_tokenizer(vocab_size: int = 400):
    """Train a byte-level BPE tokenizer on a small built-in corpus (offline, deterministic)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=["<|endoftext|>", "<|pad|>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(_CORPUS * 4, trainer=trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        eos_token="<|endoftext|>",
        bos_token="<|endoftext|>",
        pad_token="<|pad|>",
    )


def make_tiny_model(out_dir: str | Path, seed: int = 0, hidden_size: int = 64) -> Path:
    """Write a tiny random Llama model + tokenizer to ``out_dir`` and return the path."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    out_dir = Path(out_dir)
    tokenizer = make_tokenizer()
    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=hidden_size,
        intermediate_size=hidden_size * 2,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=2048,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        tie_word_embeddings=True,
    )
    model = LlamaForCausalLM(config)
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)
    return out_dir
