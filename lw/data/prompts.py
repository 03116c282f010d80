"""Prompt files and the lengths they ask for, shared by DPO pairs, AgentWrite and GRPO.

The files (`pairs.prompts`, `agentwrite.instructions`, GRPO's `data=prompts`) hold per line a
`prompt` field, or a messages (role/content) or ShareGPT (from/value) conversation whose one user
turn is the instruction, and an optional `id`. `required_length` reads the length an instruction
asks for from its own words, when the file does not give it.
"""

from __future__ import annotations

import re
import unicodedata
from pathlib import Path
from typing import Callable

from lw.errors import MissingFile, UserError
from lw.jsonl import read_json_objects
from lw.words import parse_length


def read_prompt_file(path: str | Path, setting: str, requirement: str,
                     check_id: Callable[[object, str], str]) -> list[dict]:
    """{"id", "prompt", "row", "where"} per line, ids unique; a bad line fails naming file, line and field.

    `setting` names the file's setting (for a missing file), `requirement` the message for an empty
    prompt ("field '{field}' must hold ...", {field} being prompt or messages), `check_id(raw id,
    where)` the caller's rule for ids.
    """
    path = Path(path).expanduser()
    if not path.is_file():
        raise MissingFile(f"{setting}: {path} does not exist")
    rows: list[dict] = []
    first_line: dict[str, str] = {}
    for where, row in read_json_objects(path):
        if "prompt" in row:
            prompt, field = row["prompt"], "prompt"
        elif "messages" in row or "conversations" in row:
            prompt, field = user_turn(row, where), "messages"
        else:
            raise UserError(f"{where}: missing field 'prompt' (or 'messages' with one user turn)")
        if not isinstance(prompt, str) or not prompt.strip():
            raise UserError(f"{where}: {requirement.format(field=field)}")
        pid = check_id(row.get("id", len(rows)), where)
        if pid in first_line:
            raise UserError(f"{where}: duplicate id {pid!r} (first at line {first_line[pid]})")
        first_line[pid] = where.rsplit(":", 1)[1]
        rows.append({"id": pid, "prompt": prompt, "row": row, "where": where})
    if not rows:
        raise UserError(f"{path}: no prompts")
    return rows


def user_turn(row: dict, where: str):
    """The content of the single user turn of a messages or ShareGPT row (checked by the caller)."""
    if "messages" in row:
        turns, role, content, user = row["messages"], "role", "content", ("user",)
    else:
        turns, role, content, user = row["conversations"], "from", "value", ("human", "user")
    if not isinstance(turns, list):
        raise UserError(f"{where}: field 'messages' must be a list of turns")
    users = [t for t in turns if isinstance(t, dict) and t.get(role) in user]
    if len(users) != 1:
        raise UserError(f"{where}: field 'messages' must hold exactly one user turn for the instruction, "
                         f"found {len(users)}")
    return users[0].get(content)


# --- the required length, from the instruction's own words ----------------------------------------

_NUMBER = r"\d{1,3}(?:,\d{3})+(?:\.\d+)?|\d+(?:\.\d+)?"
_EN_RANGE = re.compile(rf"({_NUMBER})\s*(?:-|–|to|and)\s*({_NUMBER})\s*(k)?\s*-?\s*words?\b", re.IGNORECASE)
_EN = re.compile(rf"({_NUMBER})\s*(k|thousand)?\s*-?\s*words?\b", re.IGNORECASE)
_EN_COUNT = re.compile(rf"word\s*(?:count|limit)\s*(?:of|:|is|=)?\s*(?:about|around|at least|at most)?\s*({_NUMBER})\b",
                       re.IGNORECASE)
_ZH_DIGITS = {"零": 0, "一": 1, "二": 2, "两": 2, "三": 3, "四": 4, "五": 5, "六": 6, "七": 7, "八": 8, "九": 9}
_ZH_UNITS = {"十": 10, "百": 100, "千": 1000, "万": 10000}
_ZH_NUMERAL = rf"[{''.join(_ZH_DIGITS)}十百千万]+"
_ZH_NUMERAL_MIN = 50  # below this a numeral before 字 is an idiom, not a length (十字路口, 一字一句)
_ZH_RANGE = re.compile(rf"({_NUMBER})\s*(万|千)?\s*[-~～到至]\s*({_NUMBER})\s*(万|千)?\s*个?(?:汉)?[字词]")
_ZH = re.compile(rf"({_NUMBER}|{_ZH_NUMERAL})\s*(万|千)?\s*个?(?:汉)?[字词]")
_ZH_COUNT = re.compile(rf"字数\s*(?:要求)?\s*[:：]?\s*(?:为|是|在|应|需|要)?\s*"
                       rf"(?:不少于|不低于|不超过|至少|大约|大概|约|控制在|达到|超过)?\s*({_NUMBER}|{_ZH_NUMERAL})\s*(万|千)?")


def _zh_numeral(text: str) -> int | None:
    """一千五百 -> 1500, 两万 -> 20000, 三千 -> 3000; None for what is not a Chinese numeral."""
    total, section, digit = 0, 0, None
    for char in text:
        if char in _ZH_DIGITS:
            digit = _ZH_DIGITS[char]
        elif char in ("十", "百", "千"):
            section += (1 if digit is None else digit) * _ZH_UNITS[char]
            digit = None
        elif char == "万":
            total += (section + (digit or 0)) * 10000
            section, digit = 0, None
        else:
            return None
    value = total + section + (digit or 0)
    return value or None


def _number(text: str, unit: str | None = None) -> int | None:
    if re.fullmatch(_ZH_NUMERAL, text):
        value = _zh_numeral(text)
        if value is None or value < _ZH_NUMERAL_MIN:
            return None
    else:
        value = float(text.replace(",", ""))
    scale = {"k": 1000, "thousand": 1000, "千": 1000, "万": 10000}.get((unit or "").lower(), 1)
    value = round(value * scale)
    return value if value > 0 else None


def required_length(text: str) -> int | None:
    """The length (words, or Chinese characters) an instruction asks for, or None when it names none.

    English: "a 5000-word essay", "about 800 words", "in 1,200 words", "at least 300 words",
    "1.5k words", "a word count of 500"; Chinese: "不少于3000字", "5000字的文章", "字数不少于2000",
    "约800字", "三千字", "1.5万字", "300词的英语作文". A range ("800-1000 words", "3000到5000字") gives its upper end, as LongBench-Write states them. The
    first mention wins ("a 2000-word essay with a 200-word summary" asks for 2000).
    """
    text = unicodedata.normalize("NFKC", text)  # full-width digits and commas
    found: list[tuple[int, int]] = []  # (position, length)
    ranges: list[tuple[int, int]] = []  # spans of the ranges found: no single number inside one counts
    bounds = [(m, (m.group(1), m.group(3)), (m.group(2), m.group(3))) for m in _EN_RANGE.finditer(text)]
    bounds += [(m, (m.group(1), m.group(2) or m.group(4)), (m.group(3), m.group(4))) for m in _ZH_RANGE.finditer(text)]
    for m, low, high in bounds:  # (match, (low, its unit), (high, its unit))
        low, high = _number(*low), _number(*high)
        if low and high and low < high:
            found.append((m.start(), high))
            ranges.append(m.span())
    for pattern in (_EN, _EN_COUNT, _ZH, _ZH_COUNT):
        for m in pattern.finditer(text):
            if any(m.start() < end and m.end() > start for start, end in ranges):
                continue
            value = _number(m.group(1), m.group(2) if pattern.groups > 1 else None)
            if value:
                found.append((m.start(), value))
    return min(found)[1] if found else None


FROM_FIELD, FROM_TEXT, UNKNOWN = "field", "text", "unknown"  # where a prompt's required length came from
STAT_OF_SOURCE = {FROM_FIELD: "length_from_field", FROM_TEXT: "length_from_text", UNKNOWN: "length_unknown"}


def resolve_lengths(prompts: list[dict]) -> tuple[list[str], dict]:
    """Each prompt's required length, set as its "length": its `length` field, else the one its text
    asks for (`required_length`), else None; where each came from (FROM_FIELD, FROM_TEXT, UNKNOWN), and
    the count of prompts per source (length_from_field, length_from_text, length_unknown; 0 included)."""
    sources = []
    for prompt in prompts:
        if prompt["length"] is not None:
            sources.append(FROM_FIELD)
        else:
            prompt["length"] = required_length(prompt["prompt"])
            sources.append(FROM_TEXT if prompt["length"] is not None else UNKNOWN)
    counts = {stat: 0 for stat in STAT_OF_SOURCE.values()}
    for source in sources:
        counts[STAT_OF_SOURCE[source]] += 1
    return sources, counts


def read_prompts(path: str | Path, setting: str = "pairs.prompts") -> list[dict]:
    """{"id", "prompt", "length" (or None)} per line of a prompts JSONL: `prompt` (optional `id`,
    `length`), or a messages/ShareGPT row whose one user turn is the prompt. Bad lines fail named."""
    def check_id(pid, where: str) -> str:
        if "#" in str(pid):
            raise UserError(f"{where}: field 'id' must not contain '#' (sample ids are '<id>#<k>'): {str(pid)!r}")
        return str(pid)

    rows = read_prompt_file(path, setting, "field 'prompt' must be a non-empty string", check_id)
    return [{"id": r["id"], "prompt": r["prompt"],
             "length": None if r["row"].get("length") is None else parse_length(r["row"]["length"], r["where"])}
            for r in rows]
