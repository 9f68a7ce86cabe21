"""Plain-text helpers shared by the deterministic reward modules (rubric, penalties)."""

from __future__ import annotations

import re

_WORD = re.compile(r"[a-z0-9$%']+")
_SENTENCE_END = re.compile(r"(?<=[.!?])\s+|\n+")


def words(text: str) -> list[str]:
    """Lower-cased word tokens; `$` and `%` stay attached so prices count as words."""
    return _WORD.findall(text.lower())


def sentences(text: str) -> list[str]:
    """Normalised sentences (lower case, words only), empty ones dropped."""
    return [" ".join(words(s)) for s in _SENTENCE_END.split(text) if words(s)]


def keyword_hits(text: str, keywords: list[str]) -> dict[str, int]:
    """Occurrences of each keyword phrase (whole words, case-insensitive); only keywords found."""
    normalised = f" {' '.join(words(text))} "
    hits = {}
    for keyword in keywords:
        phrase = " ".join(words(keyword))
        count = normalised.count(f" {phrase} ") if phrase else 0
        if count:
            hits[keyword] = count
    return hits


def ngram_ids(tokens: list[str]) -> list[int]:
    """Words as integer ids (first-seen order), the input format of `trl.rewards` helpers."""
    vocab: dict[str, int] = {}
    return [vocab.setdefault(t, len(vocab)) for t in tokens]


def unique_fraction(items: list) -> float:
    """Share of distinct items (1.0 for an empty list: nothing repeated)."""
    return len(set(items)) / len(items) if items else 1.0


def trigrams(tokens: list[str]) -> list[tuple[str, ...]]:
    return list(zip(tokens, tokens[1:], tokens[2:]))


def keyword_density(text: str, keywords: list[str]) -> float:
    """Share of the text's words that belong to keyword phrases: ~0.3 in natural sales replies,
    near 1 in a comma-separated keyword list (the first hack a prompt optimizer finds)."""
    tokens = words(text)
    if not tokens:
        return 0.0
    return sum(n * len(words(k)) for k, n in keyword_hits(text, keywords).items()) / len(tokens)
