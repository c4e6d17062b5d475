"""A CLIP tokenizer built from a word list, so that nothing has to be downloaded.

The tokenizer is a real byte-pair-encoding `transformers.CLIPTokenizer`: its vocabulary holds the
single characters (each also in its word-final ``</w>`` form) and one chain of merges per word, so
every listed word becomes one token and any other word falls back to character pieces, exactly as a
real CLIP tokenizer treats rare words. Characters outside the alphabet map to the unknown token
(``<|endoftext|>``, as in CLIP).
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path
from typing import Iterable

from transformers import CLIPTokenizer

BOS = "<|startoftext|>"
EOS = "<|endoftext|>"
ALPHABET = "abcdefghijklmnopqrstuvwxyz0123456789"
PUNCTUATION = ".,;:!?'-"

#: Words of the embedded scene captions (see `splitldm.eval.data`) plus common function words.
DEFAULT_WORDS: tuple[str, ...] = (
    "a", "an", "the", "on", "at", "in", "of", "and", "with", "background",
    "small", "medium", "large", "big", "tiny",
    "red", "green", "blue", "yellow", "cyan", "magenta", "white", "black", "orange", "purple", "gray",
    "circle", "square", "triangle", "diamond", "cross", "ring",
    "top", "bottom", "left", "right", "center", "middle", "centre",
    "photo", "image", "picture", "drawing", "shape",
)


def _bpe(symbols: list[str], ranks: dict[tuple[str, str], int]) -> list[str]:
    """Apply byte-pair merges to ``symbols`` the way CLIP's tokenizer does (lowest rank first, all occurrences)."""
    while len(symbols) > 1:
        pairs = [(ranks.get((a, b), None), (a, b)) for a, b in zip(symbols, symbols[1:])]
        pairs = [p for p in pairs if p[0] is not None]
        if not pairs:
            break
        _, (a, b) = min(pairs)
        out, i = [], 0
        while i < len(symbols):
            if i < len(symbols) - 1 and symbols[i] == a and symbols[i + 1] == b:
                out.append(a + b)
                i += 2
            else:
                out.append(symbols[i])
                i += 1
        symbols = out
    return symbols


def build_clip_tokenizer(
    words: Iterable[str] = DEFAULT_WORDS,
    model_max_length: int = 16,
    save_dir: str | Path | None = None,
) -> CLIPTokenizer:
    """Build a BPE `CLIPTokenizer` in which each of ``words`` is a single token.

    Args:
        words: the whole-word vocabulary (lower case letters and digits only).
        model_max_length: the token sequence length the text encoder sees (CLIP uses 77).
        save_dir: where to write ``vocab.json`` / ``merges.txt``; a temporary folder if None.
    """
    words = list(dict.fromkeys(w.strip().lower() for w in words))
    if not words:
        raise ValueError("words: need at least one word")
    bad = [w for w in words if not w or any(c not in ALPHABET for c in w)]
    if bad:
        raise ValueError(f"words: only characters {ALPHABET!r} are allowed, got {bad[:5]}")
    if model_max_length < 3:
        raise ValueError(f"model_max_length: must be >= 3, got {model_max_length}")

    vocab: dict[str, int] = {}
    merges: list[str] = []

    def add(token: str) -> None:
        vocab.setdefault(token, len(vocab))

    add(BOS)
    add(EOS)
    for c in ALPHABET + PUNCTUATION:
        add(c)
        add(c + "</w>")
    ranks: dict[tuple[str, str], int] = {}
    for word in words:
        # Run BPE (lowest-rank pair first, as CLIP does) with the merges so far; while the word is
        # still in pieces, append a merge of its first pair. Appended merges rank after all earlier
        # ones, so words already reduced to one token stay one token.
        symbols = _bpe(list(word[:-1]) + [word[-1] + "</w>"], ranks)
        while len(symbols) > 1:
            pair = (symbols[0], symbols[1])
            ranks[pair] = len(merges)
            merges.append(f"{pair[0]} {pair[1]}")
            add(pair[0] + pair[1])
            symbols = _bpe(symbols, ranks)

    folder = Path(save_dir) if save_dir is not None else Path(tempfile.mkdtemp(prefix="splitldm-tok-"))
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "vocab.json").write_text(json.dumps(vocab))
    (folder / "merges.txt").write_text("#version: 0.2\n" + "\n".join(merges) + "\n")
    return CLIPTokenizer(
        str(folder / "vocab.json"),
        str(folder / "merges.txt"),
        model_max_length=model_max_length,
        unk_token=EOS,
        pad_token=EOS,
        bos_token=BOS,
        eos_token=EOS,
    )


#: The T5 sentencepiece word-start marker.
_SPACE = "\u2581"


def build_t5_tokenizer(words: Iterable[str] = DEFAULT_WORDS, model_max_length: int = 512):
    """Build a Unigram `T5TokenizerFast` in which each of ``words`` is one piece, offline.

    Ids follow T5: ``<pad>`` = 0, ``</s>`` = 1, ``<unk>`` = 2, then ``▁`` (word start), the single
    characters of `ALPHABET` + `PUNCTUATION` (each also word-initial, ``▁c``), then ``▁word`` for each
    word. Listed words score higher than their pieces, so Unigram keeps them whole; other words fall
    back to characters, unknown characters to ``<unk>``. Text is lower-cased first. ``</s>`` is
    appended to every sequence, as T5 does. No sentinel (``<extra_id_*>``) tokens.

    Args:
        words: the whole-word vocabulary (lower case letters and digits only).
        model_max_length: the longest sequence the tokenizer reports (pipelines pad to their own
            ``max_sequence_length``).
    """
    from tokenizers import normalizers
    from transformers import T5TokenizerFast

    words = list(dict.fromkeys(w.strip().lower() for w in words))
    if not words:
        raise ValueError("words: need at least one word")
    bad = [w for w in words if not w or any(c not in ALPHABET for c in w)]
    if bad:
        raise ValueError(f"words: only characters {ALPHABET!r} are allowed, got {bad[:5]}")
    if not isinstance(model_max_length, int) or model_max_length < 2:
        raise ValueError(f"model_max_length: must be an int >= 2, got {model_max_length!r}")
    vocab: list[tuple[str, float]] = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0), (_SPACE, -2.0)]
    for c in ALPHABET + PUNCTUATION:
        vocab += [(c, -5.0), (_SPACE + c, -5.5)]
    known = {piece for piece, _ in vocab}
    vocab += [(_SPACE + w, -1.0) for w in words if _SPACE + w not in known]
    tokenizer = T5TokenizerFast(vocab=vocab, extra_ids=0, model_max_length=model_max_length)
    tokenizer._tokenizer.normalizer = normalizers.Lowercase()
    return tokenizer
