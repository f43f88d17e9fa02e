"""Finding malls, brands and cities in free text.

Exact aliases first (leftmost-longest, so "曲美的床" is 曲美 and never 美的), then pinyin, which
catches what phone keyboards produce: homophone typos ("芝华士"), traditional characters
("顧家") and romanised input ("gujia"). Two-syllable aliases collide with everyday words
("没得" sounds like 美的), so pinyin matches for them need brand context.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from functools import cache

from rapidfuzz.distance import Levenshtein

_LATIN_ALIAS = re.compile(r"^[A-Za-z0-9 .&'-]+$")
_CJK_CHAR = re.compile(r"[\u4e00-\u9fff]")


@cache
def _pinyin_of(char: str) -> str:
    # Without phrase dictionaries pypinyin imports in ~29 ms and ~12 MB instead of ~120 ms and
    # ~55 MB (benchmarks/startup.py); single-character readings are all alias matching needs.
    os.environ.setdefault("PYPINYIN_NO_PHRASES", "true")
    from pypinyin import Style, lazy_pinyin

    return lazy_pinyin(char, style=Style.NORMAL)[0]


def pinyin_syllables(text: str) -> list[tuple[str, int]]:
    """(syllable, offset) for every CJK character of `text`."""
    return [(_pinyin_of(ch), i) for i, ch in enumerate(text) if _CJK_CHAR.match(ch)]


@dataclass(frozen=True)
class Hit:
    keys: tuple[str, ...]  # every catalog key the alias may mean (a shared alias names several)
    alias: str
    start: int
    end: int
    weak: bool  # a weak alias, or a sound-alike of a short one: only counts in context
    via: str  # "exact" | "pinyin"


@dataclass(frozen=True)
class AliasIndex:
    pattern: re.Pattern[str] | None
    keys_by_alias: Mapping[str, tuple[str, ...]]
    weak_aliases: frozenset[str]
    # (syllables, alias) by the alias's first syllable, and (for three or more) by its second,
    # so a typo in the first syllable is still found.
    sound_by_first: Mapping[str, tuple[tuple[tuple[str, ...], str], ...]]
    sound_by_second: Mapping[str, tuple[tuple[tuple[str, ...], str], ...]]
    romanised: Mapping[str, str]  # "gujia" -> alias

    @classmethod
    def build(cls, aliases: Mapping[str, Iterable[str]], *, weak: Mapping[str, Iterable[str]]) -> AliasIndex:
        keys_by_alias: dict[str, list[str]] = {}
        weak_set: set[str] = set()
        for key, names in aliases.items():
            for name in names:
                keys_by_alias.setdefault(name.lower(), []).append(key)
        for key, names in weak.items():
            for name in names:
                keys_by_alias.setdefault(name.lower(), []).append(key)
                weak_set.add(name.lower())
        ordered = sorted(keys_by_alias, key=len, reverse=True)
        parts = [
            rf"(?<![a-z0-9]){re.escape(alias)}(?![a-z0-9])" if _LATIN_ALIAS.match(alias) else re.escape(alias)
            for alias in ordered
        ]
        pattern = re.compile("|".join(parts), re.IGNORECASE) if parts else None
        by_first: dict[str, list[tuple[tuple[str, ...], str]]] = {}
        by_second: dict[str, list[tuple[tuple[str, ...], str]]] = {}
        romanised: dict[str, str] = {}
        for alias in ordered:
            if len(alias) < 2 or not all(_CJK_CHAR.match(ch) for ch in alias):
                continue
            sounds = tuple(_pinyin_of(ch) for ch in alias)
            by_first.setdefault(sounds[0], []).append((sounds, alias))
            if len(sounds) >= 3:
                by_second.setdefault(sounds[1], []).append((sounds, alias))
            romanised.setdefault("".join(sounds), alias)
        return cls(
            pattern=pattern,
            keys_by_alias={alias: tuple(dict.fromkeys(keys)) for alias, keys in keys_by_alias.items()},
            weak_aliases=frozenset(weak_set),
            sound_by_first={k: tuple(v) for k, v in by_first.items()},
            sound_by_second={k: tuple(v) for k, v in by_second.items()},
            romanised=romanised,
        )

    def exact(self, text: str) -> list[Hit]:
        if self.pattern is None:
            return []
        return [
            Hit(self.keys_by_alias[m.group().lower()], m.group(), m.start(), m.end(),
                m.group().lower() in self.weak_aliases, "exact")
            for m in self.pattern.finditer(text)
        ]

    def by_sound(self, text: str, taken: list[tuple[int, int]]) -> list[Hit]:
        """Aliases whose pinyin appears in the text (outside spans already matched exactly).

        A three-syllable-or-longer alias also matches with one syllable mistyped ("马克波罗").
        Only aliases whose first or second syllable occurs at a position are compared there,
        which keeps a 2 000-character rant to a few dictionary look-ups per character.
        """
        syllables = pinyin_syllables(text)
        sounds = [s for s, _ in syllables]
        hits: list[Hit] = []
        for i, sound in enumerate(sounds):
            candidates = self.sound_by_first.get(sound, ())
            if i + 1 < len(sounds):
                candidates = candidates + self.sound_by_second.get(sounds[i + 1], ())
            match = self._best_at(sounds, i, candidates)
            if match is None:
                continue
            alias, size = match
            start, end = syllables[i][1], syllables[i + size - 1][1] + 1
            if end - start != size or any(s < end and start < e for s, e in taken):
                continue
            taken.append((start, end))
            hits.append(Hit(self.keys_by_alias[alias], text[start:end], start, end,
                            weak=size < 3 or alias in self.weak_aliases, via="pinyin"))
        hits.extend(self._romanised(text, taken))
        return hits

    @staticmethod
    def _best_at(sounds: list[str], i: int,
                 candidates: tuple[tuple[tuple[str, ...], str], ...]) -> tuple[str, int] | None:
        """The longest alias sounding exactly like the text at i, else one with a single typo."""
        typo: tuple[str, int] | None = None
        for alias_sounds, alias in sorted(candidates, key=lambda c: -len(c[0])):
            size = len(alias_sounds)
            window = sounds[i : i + size]
            if len(window) < size:
                continue
            wrong = [(got, want) for got, want in zip(window, alias_sounds, strict=True) if got != want]
            if not wrong:
                return alias, size
            if typo is None and size >= 3 and len(wrong) == 1 and \
                    Levenshtein.normalized_similarity(*wrong[0]) >= 0.5:
                typo = alias, size
        return typo

    def _romanised(self, text: str, taken: list[tuple[int, int]]) -> list[Hit]:
        """'gujia' or 'zhi hua shi' typed instead of the characters."""
        hits = []
        for m in re.finditer(r"[a-z]+(?: [a-z]+)*", text.lower()):
            alias = self.romanised.get(m.group().replace(" ", ""))
            if alias and not any(s < m.end() and m.start() < e for s, e in taken):
                hits.append(Hit(self.keys_by_alias[alias.lower()], text[m.start():m.end()], m.start(), m.end(),
                                weak=alias.lower() in self.weak_aliases, via="pinyin"))
        return hits

    def find(self, text: str) -> list[Hit]:
        exact = self.exact(text)
        return exact + self.by_sound(text, [(h.start, h.end) for h in exact])
