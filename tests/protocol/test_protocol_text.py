"""Synthetic text of a requested token length (exact with a tokenizer), counted alike by the emulator."""
from __future__ import annotations

import numpy as np
import orjson
import pytest

from balanceroute.emulate.protocol import parse_request, token_text
from balanceroute.protocol.synthetic import synthetic_text
from balanceroute.protocol.tokenizer import load_tokenizer


def test_without_tokenizer_one_word_per_requested_token():
    text, n = synthetic_text(37, np.random.default_rng(0))
    assert n == 37 and len(text.split()) == 37


def test_the_emulator_counts_synthetic_text_and_its_own_output_at_their_length():
    text, n = synthetic_text(50, np.random.default_rng(1))
    request = parse_request(orjson.dumps({"prompt": text, "max_tokens": 1}), chat=False, served_model="m",
                            max_model_len=100)
    assert request.prompt_len == n == 50
    assert len(token_text(0, 300).split()) == 300


@pytest.fixture(scope="module")
def bpe_dir(tmp_path_factory):
    """A small byte-level BPE tokenizer.json trained here (no downloads)."""
    tokenizers = pytest.importorskip("tokenizers", reason="the optional 'tokenizers' package is not installed")
    tok = tokenizers.Tokenizer(tokenizers.models.BPE())
    tok.pre_tokenizer = tokenizers.pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = tokenizers.decoders.ByteLevel()
    rng = np.random.default_rng(0)
    letters = list("abcdefghij ")
    corpus = ["".join(rng.choice(letters, 60)) for _ in range(300)]
    tok.train_from_iterator(corpus, tokenizers.trainers.BpeTrainer(
        vocab_size=300, initial_alphabet=tokenizers.pre_tokenizers.ByteLevel.alphabet(), show_progress=False))
    path = tmp_path_factory.mktemp("tok")
    tok.save(str(path / "tokenizer.json"))
    return path


@pytest.mark.parametrize("length", [1, 7, 64, 333])
def test_with_a_tokenizer_the_length_is_exact(bpe_dir, length):
    tok = load_tokenizer(bpe_dir)
    # English words are split into several tokens by this tokenizer, so hitting the length takes the fitting
    text, n = synthetic_text(length, np.random.default_rng(length), tok)
    assert n == length and len(tok.encode(text)) == length


def test_unloadable_tokenizer_names_the_problem(tmp_path):
    with pytest.raises(ValueError, match=r"cannot load tokenizer '.*nope'"):
        load_tokenizer(tmp_path / "nope")
