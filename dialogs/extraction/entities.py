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
    # Without phrase dictionaries pypinyin imports in ~60 ms and ~23 MB instead of seconds and
    # hundreds of MB; single-character readings are all alias matching needs.
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
    sound_exact: Mapping[tuple[str, ...], str]  # pinyin syllables -> alias
    sound_one_off: Mapping[tuple[str, ...], tuple[tuple[str, str], ...]]  # syllables with one "*" -> (alias, sound)
    sound_sizes: tuple[int, ...]

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
        sound_exact: dict[tuple[str, ...], str] = {}
        sound_one_off: dict[tuple[str, ...], list[tuple[str, str]]] = {}
        for alias in ordered:
            if len(alias) < 2 or not all(_CJK_CHAR.match(ch) for ch in alias):
                continue
            sounds = tuple(_pinyin_of(ch) for ch in alias)
            sound_exact.setdefault(sounds, alias)
            if len(sounds) >= 3:
                for j, sound in enumerate(sounds):
                    sound_one_off.setdefault((*sounds[:j], "*", *sounds[j + 1 :]), []).append((alias, sound))
        return cls(
            pattern=pattern,
            keys_by_alias={alias: tuple(dict.fromkeys(keys)) for alias, keys in keys_by_alias.items()},
            weak_aliases=frozenset(weak_set),
            sound_exact=sound_exact,
            sound_one_off={k: tuple(v) for k, v in sound_one_off.items()},
            sound_sizes=tuple(sorted({len(k) for k in sound_exact}, reverse=True)),
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
        """
        syllables = pinyin_syllables(text)
        sounds = [s for s, _ in syllables]
        hits: list[Hit] = []
        for i in range(len(sounds)):
            for size in self.sound_sizes:
                window = tuple(sounds[i : i + size])
                if len(window) < size:
                    continue
                alias = self.sound_exact.get(window) or self._one_typo(window)
                if alias is None:
                    continue
                start, end = syllables[i][1], syllables[i + size - 1][1] + 1
                if end - start != size or any(s < end and start < e for s, e in taken):
                    continue
                taken.append((start, end))
                hits.append(Hit(self.keys_by_alias[alias], text[start:end], start, end,
                                weak=size < 3 or alias in self.weak_aliases, via="pinyin"))
        hits.extend(self._romanised(text, taken))
        return hits

    def _one_typo(self, window: tuple[str, ...]) -> str | None:
        if len(window) < 3:
            return None
        for j, sound in enumerate(window):
            for alias, expected in self.sound_one_off.get((*window[:j], "*", *window[j + 1 :]), ()):
                if Levenshtein.normalized_similarity(sound, expected) >= 0.5:
                    return alias
        return None

    def _romanised(self, text: str, taken: list[tuple[int, int]]) -> list[Hit]:
        """'gujia' or 'zhi hua shi' typed instead of the characters."""
        joined = {"".join(sounds): alias for sounds, alias in self.sound_exact.items()}
        hits = []
        for m in re.finditer(r"[a-z]+(?: [a-z]+)*", text.lower()):
            alias = joined.get(m.group().replace(" ", ""))
            if alias and not any(s < m.end() and m.start() < e for s, e in taken):
                hits.append(Hit(self.keys_by_alias[alias.lower()], text[m.start():m.end()], m.start(), m.end(),
                                weak=alias.lower() in self.weak_aliases, via="pinyin"))
        return hits

    def find(self, text: str) -> list[Hit]:
        exact = self.exact(text)
        return exact + self.by_sound(text, [(h.start, h.end) for h in exact])
