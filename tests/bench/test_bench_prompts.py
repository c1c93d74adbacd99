"""Prompt texts: the workload's own, or synthetic of a requested token length (exact with a tokenizer)."""
from __future__ import annotations

import numpy as np
import pytest

from balanceroute.bench import load_tokenizer
from balanceroute.bench.prompts import prompt_texts, synthetic_text
from balanceroute.workload import Workload
from tests.support.bench import make_workload


def test_without_tokenizer_one_word_per_requested_token():
    text, n = synthetic_text(37, np.random.default_rng(0))
    assert n == 37 and len(text.split()) == 37


def test_workload_texts_are_used_as_they_are():
    texts, lens = prompt_texts(make_workload(2, prompts=["a b", "c"]))
    assert texts == ["a b", "c"] and lens.tolist() == [16, 16]


def test_requests_sharing_a_prompt_hash_share_the_text():
    wl = Workload(np.zeros(4), np.array([5, 5, 5, 9]), np.ones(4), np.array([7, 0, 7, 7]))
    texts, lens = prompt_texts(wl, seed=1)
    assert texts[0] == texts[2] and texts[1] != texts[0] and texts[3] != texts[0]
    assert lens.tolist() == [5, 5, 5, 9]
    assert prompt_texts(wl, seed=1)[0] == texts and prompt_texts(wl, seed=2)[0] != texts


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
