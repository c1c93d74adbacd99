"""Text tokenizers, for exact prompt token counts where a model's tokenizer is at hand.

Optional on every side that counts text: the benchmark client fits synthetic prompts to an exact length with one,
the routing proxy and the emulator count prompt tokens with one (each has its own rule without). Two libraries
can provide it: ``tokenizers`` (a directory or file holding ``tokenizer.json``) or ``transformers`` (any name
``AutoTokenizer`` resolves); both are imported only when a tokenizer is asked for.
"""
from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Protocol


class TextTokenizer(Protocol):
    """Encodes without special tokens and decodes; what :func:`load_tokenizer` returns."""

    def encode(self, text: str) -> Sequence[int]: ...

    def decode(self, ids: Sequence[int]) -> str: ...


class _FastTokenizer:
    """A ``tokenizers.Tokenizer`` (from ``tokenizer.json``) behind :class:`TextTokenizer`."""

    def __init__(self, path: Path) -> None:
        from tokenizers import Tokenizer
        self._tok = Tokenizer.from_file(str(path))

    def encode(self, text: str) -> list[int]:
        return self._tok.encode(text, add_special_tokens=False).ids

    def decode(self, ids: Sequence[int]) -> str:
        return self._tok.decode(list(ids))


class _HFTokenizer:
    """A ``transformers`` tokenizer behind :class:`TextTokenizer`."""

    def __init__(self, name: str) -> None:
        from transformers import AutoTokenizer
        self._tok = AutoTokenizer.from_pretrained(name)

    def encode(self, text: str) -> list[int]:
        return self._tok.encode(text, add_special_tokens=False)

    def decode(self, ids: Sequence[int]) -> str:
        return self._tok.decode(list(ids))


def load_tokenizer(name_or_path: str | Path) -> TextTokenizer:
    """The tokenizer in a local directory (``tokenizer.json``, via ``tokenizers``) or by ``transformers`` name.

    Raises ValueError naming what is missing when neither library can load it.
    """
    path = Path(name_or_path)
    file = path / "tokenizer.json" if path.is_dir() else path
    if file.name == "tokenizer.json" and file.is_file():
        try:
            return _FastTokenizer(file)
        except ImportError:
            pass
    try:
        return _HFTokenizer(str(name_or_path))
    except ImportError:
        raise ValueError(f"cannot load tokenizer {str(name_or_path)!r}: install 'transformers', or 'tokenizers' "
                         f"for a directory holding tokenizer.json") from None
    except (OSError, ValueError) as exc:
        raise ValueError(f"cannot load tokenizer {str(name_or_path)!r}: {exc}") from None
