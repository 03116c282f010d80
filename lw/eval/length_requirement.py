"""lw's own length adherence on queries that state their length in words (docs/science.md, "lw's
length adherence on WritingBench"): not part of WritingBench, whose judge scores length as one of
its criteria.

`parse_requirement` reads what a query asks of the whole response's length: a range ("2000-2500
words", 3000～4000字), a floor ("no less than 3000 words", 不少于3000字, 3000字以上), a ceiling
("within 1500 words", 500字以内) or a target ("about 2000 words", 1500字左右, "a 3000-word
article"). Words and Chinese characters are both counted as lw.words.count_words counts them.
A length stated per part (each section, per post, 每条), for a title or slogan, or as a change
("increase by 300 words") is not the whole response's and is passed over; a requirement in minutes,
lines or pages is not parsed. `requirement_score` scores a produced length against it in the
spirit of S_l: 100 inside the range (or on the right side of a floor or ceiling), and S_l against
the nearest bound outside it.
"""

from __future__ import annotations

import re
import unicodedata

from lw.words import length_score

RANGE, AT_LEAST, AT_MOST, ABOUT = "range", "at_least", "at_most", "about"

_NUMBER = r"\d{1,3}(?:,\d{3})+|\d+(?:\.\d+)?"
_MENTION = re.compile(
    rf"(?P<between>between\s+)?(?P<low>{_NUMBER})\s*(?P<low_wan>万)?"
    # "and" joins a range only after "between" ("3 sections and 2000 words" is not one)
    rf"(?:\s*(?:-|–|—|~|～|〜|到|至|to|(?(between)and|(?!)))\s*(?P<high>{_NUMBER})\s*(?P<high_wan>万)?)?"
    rf"\s*-?\s*(?:(?P<words>words?)\b|个?汉?(?P<chars>字)(?!数))", re.IGNORECASE)
# Qualifiers in the few characters before the number, or right after its unit; the longer of two
# that end at the same place wins ("no less than" over "less than").
_BEFORE = [(p, kind) for kind, phrases in (
    (AT_LEAST, ("at least", "no less than", "not less than", "no fewer than", "not fewer than", "more than",
                "over", "exceeding", "exceed", "minimum of", "minimum", "不少于", "不低于", "至少", "超过",
                "不得少于", "不能少于", "多于")),
    (AT_MOST, ("no more than", "not more than", "not exceed", "not to exceed", "no longer than", "at most",
               "up to", "within", "under", "less than", "fewer than", "maximum of", "maximum", "limited to",
               "不超过", "不多于", "最多", "不得超过")),
    (ABOUT, ("about", "approximately", "around", "roughly", "approx.", "约", "大约", "大概")),
) for p in phrases]
_AFTER = ((AT_LEAST, ("以上", "or more", "plus")), (AT_MOST, ("以内", "以下", "之内", "or less", "or fewer")),
          (ABOUT, ("左右", "上下")))
# A length that is not the whole response's: per part, for a headline, or a change.
_PART = re.compile(r"\b(?:each|per|every)\b|每|各(?:部分|章|节|段|条)", re.IGNORECASE)
_NOT_WHOLE = re.compile(r"\b(?:title|headline|slogans?|subject line|increase[sd]? by|add(?:ing)?|expand(?:ed)? by)\b"
                        r"|标题|标语|口号|增加|扩充|扩写", re.IGNORECASE)
_TOTAL = re.compile(r"\b(?:total(?:ing|ling)?|overall|entire|whole)\b|总|全文|全篇|整体|整篇", re.IGNORECASE)
# A clause ends at a sentence mark, a line break or a comma that is not inside a number (1,500).
_CLAUSE_END = re.compile(r"[.;!?。；！？\n]|(?<!\d)[,，]|[,，](?!\d)")


def _value(number: str, wan: str | None) -> int | float:
    value = float(number.replace(",", "")) * (10000 if wan else 1)
    return int(value) if value.is_integer() else value


def _clause(text: str, start: int, end: int) -> tuple[str, str]:
    """The clause's text before `start` and after `end`."""
    before = text[:start]
    cut = max((m.end() for m in _CLAUSE_END.finditer(before)), default=0)
    after = _CLAUSE_END.search(text, end)
    return before[cut:], text[end: after.start() if after else len(text)]


def _phrase(phrase: str) -> re.Pattern:
    return re.compile(rf"(?<![a-z]){re.escape(phrase)}(?![a-z])" if phrase.isascii() else re.escape(phrase))


_BEFORE_PATTERNS = [(_phrase(p), kind) for p, kind in _BEFORE]


def _qualifier(before: str, after: str) -> str | None:
    """The qualifier right before the number (at most a few characters between, no digit) or right
    after its unit; the closest one before wins, and of two ending together the longer."""
    tail, head = before[-40:].lower(), after[:8].lower().lstrip()
    for kind, phrases in _AFTER:
        if any(head.startswith(p) for p in phrases):
            return kind
    found = []
    for pattern, kind in _BEFORE_PATTERNS:
        for m in pattern.finditer(tail):
            gap = tail[m.end():]
            if len(gap.strip()) <= 12 and not re.search(r"\d", gap):
                found.append((m.end(), m.end() - m.start(), kind))
    return max(found)[2] if found else None


def mentions(text: str) -> list[dict]:
    """Every length stated in words or Chinese characters, in order: {"kind", "low", "high", "unit",
    "text" (the clause around it), "whole" (False for a part's, a title's or a change), "total"}."""
    text = unicodedata.normalize("NFKC", text)  # full-width digits, commas and tildes
    found = []
    for m in _MENTION.finditer(text):
        low = _value(m["low"], m["low_wan"] or m["high_wan"])
        high = _value(m["high"], m["high_wan"]) if m["high"] else None
        before, after = _clause(text, m.start(), m.end())
        if high is not None and high > low:
            kind = RANGE
        else:
            kind, high = _qualifier(before, after) or ABOUT, None
        bounds = {RANGE: (low, high), AT_LEAST: (low, None), AT_MOST: (None, low), ABOUT: (low, low)}[kind]
        clause = (before + m.group(0) + after).strip()
        found.append({"kind": kind, "low": bounds[0], "high": bounds[1], "unit": "words" if m["words"] else "字",
                      "text": clause[:200], "whole": not (_PART.search(clause) or _NOT_WHOLE.search(before)),
                      "total": bool(_TOTAL.search(before))})
    return [f for f in found if (f["low"] or 0) > 0 or (f["high"] or 0) > 0]


def parse_requirement(text: str) -> dict:
    """The query's requirement on the whole response: {"parsed": True, kind, low, high, unit, text}
    (the first one said of the total, else the first of the whole response), or {"parsed": False,
    "why": ...}."""
    found = mentions(text)
    whole = [f for f in found if f["whole"]]
    if not whole:
        why = ("only lengths of parts, titles or changes" if found
               else "no length in words or Chinese characters (minutes, lines or pages are not parsed)")
        return {"parsed": False, "why": why, "mentions": len(found)}
    chosen = next((f for f in whole if f["total"]), whole[0])
    return {"parsed": True, **{k: chosen[k] for k in ("kind", "low", "high", "unit", "text")},
            "mentions": len(found)}


def requirement_score(requirement: dict, produced: int) -> float:
    """100 within [low, high] (an open side is unbounded), else S_l against the nearer bound; an
    empty response scores 0, as S_l does."""
    low, high = requirement["low"], requirement["high"]
    if produced <= 0:
        return 0.0
    if low is not None and produced < low:
        return length_score(low, produced)
    if high is not None and produced > high:
        return length_score(high, produced)
    return 100.0
