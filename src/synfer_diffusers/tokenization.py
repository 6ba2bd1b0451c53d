"""Offline CLIP tokenizers: a byte-level BPE in CLIP's format, trained on a caption corpus.

No CLIP vocabulary can be downloaded on the machines this package is developed on, so text encoders trained
from scratch (FaceWorld, tests) use a tokenizer learned here. The result is an ordinary transformers
`CLIPTokenizer`: `vocab.json` + `merges.txt` (+ `tokenizer.json`) that `CLIPTokenizer.from_pretrained(folder)`
and `AutoTokenizer.from_pretrained(folder)` load back, with CLIP's conventions:

- text is NFC-normalised, whitespace-collapsed and lower-cased, then split by CLIP's regex;
- each word is a sequence of byte symbols (GPT-2 byte-to-unicode map) whose last symbol carries `</w>`;
- the vocabulary starts with the 256 byte symbols and their 256 `</w>` forms (so any text tokenizes, nothing
  is ever unknown), continues with one token per merge in merge order, and ends with `<|startoftext|>` and
  `<|endoftext|>` (as in CLIP, where they are ids 49406 and 49407). `<|endoftext|>` is also the pad token.

Training is plain BPE (Sennrich et al., 2016) on word counts, written in Python so that the merges are
deterministic (the `tokenizers` trainer breaks ties differently from one process to the next): at each step the
most frequent adjacent pair is merged; ties go to the lexicographically smallest pair.
"""

from __future__ import annotations

import heapq
import json
import os
from collections import Counter
from collections.abc import Iterable

from transformers import CLIPTokenizer

from .value_checks import check_int

BOS_TOKEN = "<|startoftext|>"
EOS_TOKEN = "<|endoftext|>"
END_OF_WORD = "</w>"
NUM_BYTE_SYMBOLS = 512  # 256 byte symbols + their `</w>` forms
MIN_VOCAB_SIZE = NUM_BYTE_SYMBOLS + 2  # + <|startoftext|>, <|endoftext|>


def bytes_to_unicode() -> dict[int, str]:
    """GPT-2 / CLIP map from the 256 byte values to printable unicode characters, in CLIP's vocabulary order."""
    byte_values = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1))
    byte_values += list(range(ord("®"), ord("ÿ") + 1))
    characters = byte_values[:]
    extra = 0
    for b in range(256):
        if b not in byte_values:
            byte_values.append(b)
            characters.append(256 + extra)
            extra += 1
    return dict(zip(byte_values, map(chr, characters)))


def _clip_pipeline():
    """CLIP's normaliser and pre-tokenizer, taken from transformers' `CLIPTokenizer` so training splits text
    exactly as the tokenizer will."""
    backend = CLIPTokenizer(vocab={BOS_TOKEN: 0, EOS_TOKEN: 1}, merges=[]).backend_tokenizer
    return backend.normalizer, backend.pre_tokenizer


def _count_words(corpus: Iterable[str]) -> Counter[str]:
    if isinstance(corpus, str):
        raise TypeError("`corpus` must be an iterable of strings (e.g. a list of captions), not one string.")
    normalizer, pre_tokenizer = _clip_pipeline()
    counts: Counter[str] = Counter()
    for i, text in enumerate(corpus):
        if not isinstance(text, str):
            raise TypeError(f"`corpus` must contain strings; item {i} is {type(text).__name__}.")
        words = pre_tokenizer.pre_tokenize_str(normalizer.normalize_str(text))  # [(byte-level word, offsets)]
        counts.update(word for word, _ in words if word not in (BOS_TOKEN, EOS_TOKEN))
    return counts


def learn_bpe_merges(
    word_counts: dict[str, int], max_new_tokens: int, min_frequency: int = 2
) -> list[tuple[str, str]]:
    """Learns BPE merges on `{byte-level word: count}` until `max_new_tokens` new tokens exist or no pair occurs
    `min_frequency` times. Deterministic: ties go to the lexicographically smallest pair."""
    words = [list(word[:-1]) + [word[-1] + END_OF_WORD] for word in sorted(word_counts) if word]
    freqs = [word_counts[word] for word in sorted(word_counts) if word]
    pair_counts: Counter[tuple[str, str]] = Counter()
    where: dict[tuple[str, str], set[int]] = {}
    for i, symbols in enumerate(words):
        for pair in zip(symbols, symbols[1:]):
            pair_counts[pair] += freqs[i]
            where.setdefault(pair, set()).add(i)
    heap = [(-count, pair) for pair, count in pair_counts.items()]
    heapq.heapify(heap)

    known = set(bytes_to_unicode().values())
    known |= {symbol + END_OF_WORD for symbol in list(known)}
    merges: list[tuple[str, str]] = []
    new_tokens = 0
    while heap and new_tokens < max_new_tokens:
        neg_count, pair = heapq.heappop(heap)
        if pair_counts.get(pair, 0) != -neg_count:
            continue  # stale heap entry
        if -neg_count < min_frequency:
            break
        merges.append(pair)
        merged = pair[0] + pair[1]
        if merged not in known:
            known.add(merged)
            new_tokens += 1
        touched: set[tuple[str, str]] = set()
        for i in sorted(where.pop(pair, ())):
            old = words[i]
            new, j = [], 0
            while j < len(old):
                if j + 1 < len(old) and (old[j], old[j + 1]) == pair:
                    new.append(merged)
                    j += 2
                else:
                    new.append(old[j])
                    j += 1
            if len(new) == len(old):
                continue
            for p in zip(old, old[1:]):
                pair_counts[p] -= freqs[i]
                touched.add(p)
            for p in zip(new, new[1:]):
                pair_counts[p] += freqs[i]
                where.setdefault(p, set()).add(i)
                touched.add(p)
            words[i] = new
        pair_counts.pop(pair, None)
        for p in touched:
            if pair_counts.get(p, 0) > 0:
                heapq.heappush(heap, (-pair_counts[p], p))
            else:
                pair_counts.pop(p, None)
    return merges


def clip_vocab_from_merges(merges: list[tuple[str, str]]) -> dict[str, int]:
    """CLIP's vocabulary layout: byte symbols, their `</w>` forms, one token per merge, then the special tokens."""
    symbols = list(bytes_to_unicode().values())
    tokens = symbols + [s + END_OF_WORD for s in symbols]
    seen = set(tokens)
    for a, b in merges:
        if a + b not in seen:
            seen.add(a + b)
            tokens.append(a + b)
    tokens += [BOS_TOKEN, EOS_TOKEN]
    return {token: i for i, token in enumerate(tokens)}


def train_clip_tokenizer(
    corpus: Iterable[str],
    vocab_size: int = 1024,
    save_directory: str | os.PathLike | None = None,
    model_max_length: int = 77,
    min_frequency: int = 2,
) -> CLIPTokenizer:
    r"""
    Trains a byte-level BPE tokenizer in CLIP's format on a caption corpus, offline.

    Args:
        corpus (`Iterable[str]`): captions (e.g. a `datasets` text column).
        vocab_size (`int`, defaults to 1024): largest vocabulary size, special tokens included; at least 514
            (the 512 byte symbols and two special tokens). A small corpus may give fewer tokens.
        save_directory (`str`, *optional*): where to write `vocab.json`, `merges.txt` and the transformers files.
        model_max_length (`int`, defaults to 77): CLIP's context length; match the text encoder's
            `max_position_embeddings`.
        min_frequency (`int`, defaults to 2): a pair is merged only if it occurs at least this often.

    Returns:
        [`~transformers.CLIPTokenizer`]: common caption words are single tokens; any text tokenizes.

    Example:

    ```py
    >>> from synfer_diffusers.tokenization import train_clip_tokenizer
    >>> from transformers import CLIPTokenizer

    >>> captions = ["a photo of a happy face", "a photo of a sad face"] * 10
    >>> tokenizer = train_clip_tokenizer(captions, vocab_size=600, save_directory="my-tokenizer")
    >>> tokenizer.tokenize("a photo of a happy face")
    ['a</w>', 'photo</w>', 'of</w>', 'a</w>', 'happy</w>', 'face</w>']
    >>> tokenizer = CLIPTokenizer.from_pretrained("my-tokenizer")  # loads back offline
    ```
    """
    if not isinstance(vocab_size, int) or vocab_size < MIN_VOCAB_SIZE:
        raise ValueError(f"`vocab_size` must be an int >= {MIN_VOCAB_SIZE} (512 byte symbols + 2 special tokens), "
                         f"got {vocab_size!r}.")  # fmt: skip
    check_int("model_max_length", model_max_length, 2)
    check_int("min_frequency", min_frequency, 1)

    merges = learn_bpe_merges(_count_words(corpus), vocab_size - MIN_VOCAB_SIZE, min_frequency)
    vocab = clip_vocab_from_merges(merges)
    tokenizer = CLIPTokenizer(vocab=vocab, merges=merges, model_max_length=model_max_length)
    if save_directory is not None:
        save_clip_tokenizer_files(vocab, merges, save_directory)
        tokenizer.save_pretrained(save_directory)
    return tokenizer


def save_clip_tokenizer_files(
    vocab: dict[str, int], merges: list[tuple[str, str]], save_directory: str | os.PathLike
) -> None:
    """Writes CLIP's original tokenizer files, `vocab.json` and `merges.txt` (`#version: 0.2` header)."""
    os.makedirs(save_directory, exist_ok=True)
    with open(os.path.join(save_directory, "vocab.json"), "w", encoding="utf-8") as f:
        json.dump(vocab, f, ensure_ascii=False)
    with open(os.path.join(save_directory, "merges.txt"), "w", encoding="utf-8") as f:
        f.write("#version: 0.2\n")
        f.writelines(f"{a} {b}\n" for a, b in merges)


def tiny_corpus() -> list[str]:
    """A fixed caption corpus: the package's prompt phrases, AU descriptions and a few face words."""
    from .facs import AU_DESCRIPTIONS, EXPRESSIONS
    from .prompts import DEFAULT_DESCRIPTION, EXPRESSION_PHRASES, enrich_prompt

    descriptions = [
        DEFAULT_DESCRIPTION,
        "a photo of a face",
        "a photo of a man",
        "a photo of a woman",
        "a photo of an elderly man with glasses",
        "a photo of a young woman with long hair",
        "a close-up photo of a child with short hair",
        "a portrait of a person with a beard",
        "a face with dark skin and curly hair",
        "a face with light skin and blond hair",
    ]
    corpus = list(descriptions)
    for phrases in EXPRESSION_PHRASES.values():
        corpus.extend(phrases)
    corpus.extend(AU_DESCRIPTIONS.values())
    for i, description in enumerate(descriptions):
        for j, expression in enumerate(EXPRESSIONS):
            corpus.append(enrich_prompt(description, expression, template=i + j, phrase=i))
    return corpus


def tiny_clip_tokenizer(save_directory: str | os.PathLike | None = None) -> CLIPTokenizer:
    """A small deterministic CLIP tokenizer (vocabulary <= 1024) for tests and tiny models, trained on
    [`tiny_corpus`]. Words of the package's prompts are single tokens; any text still tokenizes."""
    return train_clip_tokenizer(tiny_corpus(), vocab_size=1024, save_directory=save_directory, min_frequency=1)


__all__ = [
    "BOS_TOKEN",
    "EOS_TOKEN",
    "bytes_to_unicode",
    "learn_bpe_merges",
    "tiny_clip_tokenizer",
    "tiny_corpus",
    "train_clip_tokenizer",
]
