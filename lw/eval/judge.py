"""The LLM judge of LongBench-Write's quality score S_q (docs/science.md section 2).

The judge gets the benchmark's own judge.txt with the prompt and the response filled in, and must
answer with scores 1-5 on six dimensions. A reply without them is asked again (the judge samples at
temperature 0.5), up to `judge.attempts` replies in all, then counted as unparseable: it is never
replaced by a default score. Judgements are appended to a JSONL cache keyed by (judge model, filled
judge prompt) as they arrive, so an interrupted or repeated run sends only what is missing.

How a reply is read is two settings: `judge.scores` (integer: lw's rule, an integer 1-5; numeric:
the official judge's, anything float() takes) and `judge.extraction` (lenient: lw's reader;
official: the official judge's ```json block or whole reply). Each judgement records whether the
other choice of either setting would have decided one of its replies otherwise (`non_integer`,
`extraction_differs`), so a run counts how much its rules matter.

`judge_for` and `longbench_judge` build the judge a run's settings ask for: evaluation's, and that
of the stages outside it (task=dpo_pairs, GRPO's quality reward).
"""

from __future__ import annotations

import ast
import hashlib
import json
import logging
import math
import re
from pathlib import Path

from filelock import FileLock
from omegaconf import OmegaConf
from tqdm import tqdm

from lw import llm
from lw.config import BenchmarkConfig, Extraction, JudgeKind, ScoreRule
from lw.errors import SHOWN_FAILURES, MissingFile, UserError
from lw.eval.benchmarks import judge_template
from lw.jsonl import Appender, read_resumable

log = logging.getLogger(__name__)

DIMENSIONS = ("Relevance", "Accuracy", "Coherence", "Clarity", "Breadth and Depth", "Reading Experience")
OK, UNPARSEABLE, FAILED = "ok", "unparseable", "failed"
SCORE_RULES = tuple(ScoreRule)
EXTRACTIONS = tuple(Extraction)
DIFFERENCES = ("non_integer", "extraction_differs")
_FENCE = re.compile(r"```(?:json|JSON)?\s*(.*?)```", re.DOTALL)
# The only fence the official judge reads (evaluation/eval_quality.py lines 71-72).
_OFFICIAL_FENCE = re.compile(r"```json\n(.*?)\n```", re.DOTALL)
_PLACEHOLDER = re.compile(r"\$(INST|RESPONSE)\$")


class Unparseable(ValueError):
    pass


def judge_prompt(template: str, prompt: str, response: str) -> str:
    """judge.txt with $INST$ and $RESPONSE$ filled in one pass (a response may itself hold "$INST$")."""
    return _PLACEHOLDER.sub(lambda m: prompt if m.group(1) == "INST" else response, template)


def _objects(text: str):
    """Every {...} object that parses as JSON, or as a Python literal (single quotes), in `text`."""
    decoder = json.JSONDecoder()
    for start in (m.start() for m in re.finditer(r"\{", text)):
        try:
            value, _ = decoder.raw_decode(text, start)
            yield value
            continue
        except json.JSONDecodeError:
            pass
        end = _matching_brace(text, start)
        if end is not None:
            try:
                yield ast.literal_eval(text[start: end + 1])
            except (ValueError, SyntaxError, MemoryError, RecursionError):
                pass


def _matching_brace(text: str, start: int) -> int | None:
    depth, quote = 0, None
    for i in range(start, len(text)):
        char = text[i]
        if quote:
            if char == "\\":
                continue
            if char == quote and text[i - 1] != "\\":
                quote = None
        elif char in "\"'":
            quote = char
        elif char == "{":
            depth += 1
        elif char == "}":
            depth -= 1
            if depth == 0:
                return i
    return None


def _score(value, rule: str = "integer") -> int | float | None:
    """A score under `rule`, or None. integer: an integer 1-5 (or its digit as a string). numeric:
    whatever float() takes, as the official judge does (no range check; true is 1.0), but finite,
    since one NaN or infinity would make S_q meaningless."""
    if rule == "numeric":
        try:
            number = float(value)
        except (TypeError, ValueError, OverflowError):
            return None
        return number if math.isfinite(number) else None
    if isinstance(value, bool):
        return None
    if isinstance(value, str) and re.fullmatch(r"\s*[1-5]\s*", value):
        value = int(value)
    return value if isinstance(value, int) and 1 <= value <= 5 else None


def _scores_of(obj, rule: str) -> tuple[dict | None, str]:
    """The six scores of a parsed object under `rule`, or (None, why not)."""
    if not isinstance(obj, dict):
        return None, "no JSON object"
    missing = [d for d in DIMENSIONS if d not in obj]
    if missing:
        return None, f"no score for {', '.join(missing)}"
    scores = {d: _score(obj[d], rule) for d in DIMENSIONS}
    bad = [f"{d}={obj[d]!r}" for d, s in scores.items() if s is None]
    if bad:
        what = "integers 1-5" if rule == "integer" else "finite numbers"
        return None, f"scores must be {what}: {', '.join(bad)}"
    return scores, ""


def parse_judgement(text: str, scores: str = "integer", extraction: str = "lenient") -> dict:
    """The six scores of a judge reply under `scores` (integer | numeric) and `extraction`.

    lenient: JSON in code fences or amid text, single quotes allowed, and as a last resort the six
    "Dimension": N pairs of an object broken by its free text. official: the official judge's
    reading (evaluation/eval_quality.py lines 71-78): the first ```json block, else the whole reply,
    newlines removed, through json.loads, with all six keys present.

    Raises Unparseable, with the reason, when the reply has no valid score for every dimension.
    """
    if extraction == "official":
        return _parse_official(text, scores)
    problem = "no JSON object"
    for candidate in [block for block in _FENCE.findall(text)] + [text]:
        for obj in _objects(candidate):
            if not isinstance(obj, dict):
                continue
            found, problem = _scores_of(obj, scores)
            if found:
                return found
    found = _scores_in_broken_json(text, scores)
    if found:
        return found
    raise Unparseable(problem)


def _parse_official(text: str, rule: str) -> dict:
    body = text
    if "```json" in text:
        match = _OFFICIAL_FENCE.search(text)
        if not match:
            raise Unparseable("no JSON object: a ```json fence not on lines of its own (official extraction)")
        body = match.group(1)
    try:
        obj = json.loads(body.replace("\n", ""))
    except json.JSONDecodeError:
        raise Unparseable("no JSON object: neither a ```json block nor the whole reply is JSON "
                          "(official extraction)") from None
    found, problem = _scores_of(obj, rule)
    if not found:
        raise Unparseable(problem)
    return found


def _accepts(text: str, scores: str, extraction: str) -> bool:
    try:
        parse_judgement(text, scores, extraction)
        return True
    except Unparseable:
        return False


def differences(text: str, scores: str, extraction: str) -> dict[str, bool]:
    """For one reply: would the other score rule (non_integer), or the other extraction
    (extraction_differs), accept it where this one refuses, or refuse it where this one accepts?"""
    verdict = _accepts(text, scores, extraction)
    other_rule = SCORE_RULES[1 - SCORE_RULES.index(scores)]
    other_extraction = EXTRACTIONS[1 - EXTRACTIONS.index(extraction)]
    return {"non_integer": _accepts(text, other_rule, extraction) != verdict,
            "extraction_differs": _accepts(text, scores, other_extraction) != verdict}


def _scores_in_broken_json(text: str, rule: str = "integer") -> dict | None:
    """Scores from an object that is not valid JSON as a whole, typically for unescaped quotes in the
    free-text "Analysis": each dimension must appear once as a quoted key with a valid score."""
    scores = {}
    for d in DIMENSIONS:
        found = re.findall(rf"""["']{re.escape(d)}["']\s*:\s*["']?(\d+(?:\.\d+)?)["']?\s*[,}}\n]""", text)
        if len(found) != 1 or _score(found[0], rule) is None:
            return None
        scores[d] = _score(found[0], rule)
    return scores


def cache_key(model: str, filled_prompt: str) -> str:
    return hashlib.sha256(json.dumps([model, filled_prompt], ensure_ascii=False).encode()).hexdigest()


class Judge:
    """Scores (prompt, response) pairs on an OpenAI-compatible endpoint, concurrently, with a cache."""

    def __init__(self, judge_cfg, template: str, cache_path: Path | None):
        if not judge_cfg.model:
            raise UserError("judge.model is not set")
        if judge_cfg.attempts < 1:
            raise UserError(f"judge.attempts must be at least 1, got {judge_cfg.attempts}")
        if judge_cfg.max_tokens is not None and judge_cfg.max_tokens < 1:
            raise UserError(f"judge.max_tokens must be at least 1 (or null), got {judge_cfg.max_tokens}")
        self.cfg = judge_cfg
        self.template = template
        self.system: str | None = None  # a system turn before each judge prompt (none for LongBench-Write's)
        self.cache_path = Path(cache_path) if cache_path else None
        # A missing key or URL fails here, before any request.
        self.endpoint = llm.Endpoint(judge_cfg.base_url, judge_cfg.api_key_env, judge_cfg.timeout, judge_cfg.retries,
                                     "judge")

    def fill(self, row: dict) -> str:
        """The judge prompt of a row {"prompt", "response"}."""
        return judge_prompt(self.template, row["prompt"], row["response"])

    def key(self, filled: str) -> str:
        """The cache key of a filled judge prompt."""
        return cache_key(self.cfg.model, filled)

    def read(self, reply: str, seen: dict | None = None) -> dict:
        """A reply read under this judge's rules: status, scores or error, and the differences
        (those of earlier replies of the same judgement, `seen`, carried along)."""
        flags = differences(reply, self.cfg.scores, self.cfg.extraction)
        flags = {k: bool(flags[k] or (seen or {}).get(k)) for k in DIFFERENCES}
        try:
            return {"status": OK, "scores": parse_judgement(reply, self.cfg.scores, self.cfg.extraction), **flags}
        except Unparseable as err:
            return {"status": UNPARSEABLE, "scores": None, "error": str(err), **flags}

    async def _ask(self, client, row_id: str, prompt: str) -> dict:
        """Up to judge.attempts replies, until one is read; the last one's reading otherwise."""
        cfg, verdict = self.cfg, {}
        for attempts in range(1, cfg.attempts + 1):
            reply = await llm.chat(client, self.endpoint, cfg.model, prompt, temperature=cfg.temperature,
                                   top_p=cfg.get("top_p"), max_tokens=cfg.max_tokens, system=self.system)
            verdict = {**self.read(reply, verdict), "reply": reply, "attempts": attempts}
            if verdict["status"] == OK:
                return verdict
        log.warning("judge: unparseable reply for id %s after %d attempts (%s)", row_id, cfg.attempts,
                    verdict["error"])
        return verdict

    def _cached(self) -> dict[str, dict]:
        """The cache, each judgement re-read under this judge's rules (another run may have used others)."""
        cache = {}
        for key, judgement in self._read_cache().items():
            if judgement.get("status") in (OK, UNPARSEABLE) and isinstance(judgement.get("reply"), str):
                kept = {k: v for k, v in judgement.items() if k != "error"}
                judgement = {**kept, **self.read(judgement["reply"], judgement)}
            if self.cfg.retry_unparseable and judgement.get("status") == UNPARSEABLE:
                continue  # a new sample may parse; judge.retry_unparseable=false keeps them
            cache[key] = judgement
        return cache

    def judge(self, rows: list[dict]) -> list[dict]:
        """One judgement per row, in order: {"id", "status", "scores", "reply", "error", "attempts",
        "non_integer", "extraction_differs"}."""
        cfg = self.cfg
        filled = {row["id"]: self.fill(row) for row in rows}
        keys = {row["id"]: self.key(filled[row["id"]]) for row in rows}
        cache = self._cached()
        todo = [row for row in rows if keys[row["id"]] not in cache]
        if len(todo) < len(rows):
            log.info("judge: %d of %d judgements from the cache %s", len(rows) - len(todo), len(rows), self.cache_path)
        failures: dict[str, dict] = {}
        if todo:
            self.endpoint.check_reachable()  # only now: a warm cache needs no server
            appender = Appender(self.cache_path) if self.cache_path else None
            bar = tqdm(total=len(todo), desc=f"judging ({cfg.model})")

            async def work(client, row):
                return await self._ask(client, row["id"], filled[row["id"]])

            def on_result(row, judgement):
                record = {"key": keys[row["id"]], "model": cfg.model, **judgement}
                cache[record["key"]] = record
                if appender:
                    with FileLock(str(self.cache_path) + ".lock"):  # runs in parallel may share the cache
                        appender.write(record)
                bar.update()

            def on_error(row, error):
                # Not cached: a rerun asks again. Nothing is scored in its place.
                failures[row["id"]] = {"status": FAILED, "scores": None, "error": str(error)}
                if len(failures) <= SHOWN_FAILURES:
                    log.warning("judge: request failed for id %s: %s%s", row["id"], error,
                                "; further failures are counted, not shown" if len(failures) == SHOWN_FAILURES
                                else "")
                bar.update()

            try:
                llm.run_bounded(todo, work, cfg.concurrency, on_result, on_error)
            finally:
                bar.close()
                if appender:
                    appender.close()
        out = []
        for row in rows:
            judgement = failures.get(row["id"]) or cache[keys[row["id"]]]
            out.append({"id": row["id"], **{k: v for k, v in judgement.items() if k not in ("key", "model")}})
        return out

    def _read_cache(self) -> dict[str, dict]:
        if not self.cache_path:
            return {}
        with FileLock(str(self.cache_path) + ".lock"):
            return read_resumable(self.cache_path, key="key")


def build_judge(judge_cfg, template: str, cache_dir: str, cache_path: Path | None = None) -> Judge | None:
    """The judge of judge_cfg; its cache is cache_path if given, else one file per judge model under
    cache_dir/judge (judge.cache=false: none)."""
    if judge_cfg.kind == JudgeKind.none:
        return None
    if cache_path is not None:
        return Judge(judge_cfg, template, cache_path)
    cache = None
    if judge_cfg.cache:
        safe = re.sub(r"[^A-Za-z0-9._-]+", "_", judge_cfg.model or "judge")
        cache = Path(cache_dir).expanduser() / "judge" / f"{safe}.jsonl"
    return Judge(judge_cfg, template, cache)


# --- the judge of a run's settings ------------------------------------------------------------------

def judge_for(cfg, bench_cfg, cache_path: Path | None = None):
    """LongBench-Write's quality judge for a benchmark (None without a judge, for the ruler, or for
    another benchmark: lw.eval.evaluate.benchmark_judge gives WritingBench its own).

    Built before generation, so a missing key or template fails before hours of sampling. Its
    judgements are cached by judge model under cache_dir/judge, or appended to cache_path when given.
    """
    if bench_cfg.kind != "longbench_write" or cfg.judge.kind == "none":
        return None
    if cfg.judge.kind == "writingbench":
        log.warning("judge=writingbench scores WritingBench's criteria, not LongBench-Write's S_q: %s reports "
                    "S_l only", bench_cfg.kind)
        return None
    return build_judge(cfg.judge, judge_prompt_template(cfg, bench_cfg), cfg.cache_dir, cache_path)


def longbench_judge(cfg, cache_path: Path | None = None):
    """The judge of a stage outside evaluation (DPO pairs, GRPO's quality reward): the template of the
    first longbench_write eval entry (its data_dir or judge.template), else the official judge.txt."""
    bench_cfg = next((b for b in cfg.eval.values() if b.kind == "longbench_write"),
                     OmegaConf.structured(BenchmarkConfig(kind="longbench_write")))
    return judge_for(cfg, bench_cfg, cache_path)


def judge_prompt_template(cfg, bench_cfg) -> str:
    """judge.template if set, else the benchmark's own judge.txt."""
    if cfg.judge.template:
        path = Path(cfg.judge.template).expanduser()
        if not path.is_file():
            raise MissingFile(f"judge.template: no such file: {path}")
        text = path.read_text(encoding="utf-8")
        missing = [p for p in ("$INST$", "$RESPONSE$") if p not in text]
        if missing:
            raise UserError(f"judge.template: {path} lacks the placeholders {missing}")
        return text
    return judge_template(bench_cfg, cfg.cache_dir)
