"""Text clean-up shared by every extractor.

Customers paste, dictate and type on phones: full-width digits, stray control characters,
emoji and 20 000-character rants all arrive. Extractors work on one normalised form so each
of them does not have to care.
"""

from __future__ import annotations

import re
import unicodedata

# Processing cost grows with length; nobody states new facts after this many characters,
# and the full text is still stored in the transcript.
MAX_EXTRACT_CHARS = 2000

_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f\u200b-\u200f\u2028-\u202e\u2060-\u206f\ufeff]")
_SPACES = re.compile(r"[ \t\u3000]+")
CLAUSE_SPLIT = re.compile(r"[，,。!！?？;；\n…~～]+|\.(?!\d)")
CJK = re.compile(r"[\u4e00-\u9fff]")


def clean_message(raw: str) -> str:
    """What we store and show back: control characters removed, whitespace tidied, nothing else changed."""
    text = _CONTROL.sub("", raw.replace("\r\n", "\n").replace("\r", "\n"))
    text = _SPACES.sub(" ", text)
    return "\n".join(line.strip() for line in text.split("\n")).strip()


def normalize(text: str) -> str:
    """NFKC folds full-width digits/letters/punctuation to ASCII; the result is what extractors read."""
    folded = unicodedata.normalize("NFKC", text[:MAX_EXTRACT_CHARS])
    return folded.replace("￥", "¥")


def clauses(text: str) -> list[str]:
    """Split into the comma/period-separated pieces a customer uses to state one fact each."""
    return [part.strip() for part in CLAUSE_SPLIT.split(text) if part.strip()]


def clause_bounds(text: str, index: int) -> tuple[int, int]:
    """Start and end offsets of the clause containing `index`."""
    start = 0
    for match in CLAUSE_SPLIT.finditer(text):
        if match.end() <= index:
            start = match.end()
        elif match.start() >= index:
            return start, match.start()
    return start, len(text)


def has_cjk(text: str) -> bool:
    return CJK.search(text) is not None
