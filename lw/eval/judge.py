"""The LLM judge of LongBench-Write's quality score S_q (docs/science.md section 2).

The judge gets the benchmark's own judge.txt with the prompt and the response filled in, and must
answer with integer scores 1-5 on six dimensions. A reply without them is asked again (the judge
samples at temperature 0.5) up to `parse_retries` times, then counted as unparseable: it is never
replaced by a default score. Judgements are appended to a JSONL cache keyed by (judge model, filled
judge prompt) as they arrive, so an interrupted or repeated run sends only what is missing.
"""

from __future__ import annotations

import ast
import hashlib
import json
import logging
import re
from pathlib import Path

from filelock import FileLock
from tqdm import tqdm

from lw import llm
from lw.jsonl import Appender, read_resumable
from lw.errors import SHOWN_FAILURES, UserError

log = logging.getLogger(__name__)

DIMENSIONS = ("Relevance", "Accuracy", "Coherence", "Clarity", "Breadth and Depth", "Reading Experience")
OK, UNPARSEABLE, FAILED = "ok", "unparseable", "failed"
_FENCE = re.compile(r"```(?:json|JSON)?\s*(.*?)```", re.DOTALL)
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


def _score(value) -> int | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, str) and re.fullmatch(r"\s*[1-5]\s*", value):
        value = int(value)
    return value if isinstance(value, int) and 1 <= value <= 5 else None


def parse_judgement(text: str) -> dict[str, int]:
    """The six integer scores (1-5) of a judge reply: JSON in code fences or amid text, single quotes
    allowed, and as a last resort the six "Dimension": N pairs of an object broken by its free text.

    Raises Unparseable when the reply has no integer 1-5 for every dimension.
    """
    candidates = [block for block in _FENCE.findall(text)] + [text]
    problem = "no JSON object"
    for candidate in candidates:
        for obj in _objects(candidate):
            if not isinstance(obj, dict):
                continue
            missing = [d for d in DIMENSIONS if d not in obj]
            if missing:
                problem = f"no score for {', '.join(missing)}"
                continue
            scores = {d: _score(obj[d]) for d in DIMENSIONS}
            bad = [f"{d}={obj[d]!r}" for d, s in scores.items() if s is None]
            if bad:
                problem = f"scores must be integers 1-5: {', '.join(bad)}"
                continue
            return scores
    scores = _scores_in_broken_json(text)
    if scores:
        return scores
    raise Unparseable(problem)


def _scores_in_broken_json(text: str) -> dict[str, int] | None:
    """Scores from an object that is not valid JSON as a whole, typically for unescaped quotes in the
    free-text "Analysis": each dimension must appear once as a quoted key with an integer 1-5."""
    scores = {}
    for d in DIMENSIONS:
        found = re.findall(rf"""["']{re.escape(d)}["']\s*:\s*["']?(\d+(?:\.\d+)?)["']?\s*[,}}\n]""", text)
        if len(found) != 1 or _score(found[0]) is None:
            return None
        scores[d] = int(found[0])
    return scores


def cache_key(model: str, filled_prompt: str) -> str:
    return hashlib.sha256(json.dumps([model, filled_prompt], ensure_ascii=False).encode()).hexdigest()


class Judge:
    """Scores (prompt, response) pairs on an OpenAI-compatible endpoint, concurrently, with a cache."""

    def __init__(self, judge_cfg, template: str, cache_path: Path | None):
        if not judge_cfg.model:
            raise UserError("judge.model is not set")
        self.cfg = judge_cfg
        self.template = template
        self.cache_path = Path(cache_path) if cache_path else None
        # A missing key or URL fails here, before any request.
        self.endpoint = llm.Endpoint(judge_cfg.base_url, judge_cfg.api_key_env, judge_cfg.timeout, judge_cfg.retries,
                                     "judge")

    def judge(self, rows: list[dict]) -> list[dict]:
        """One judgement per row, in order: {"id", "status", "scores", "reply", "error", "attempts"}."""
        cfg = self.cfg
        filled = {row["id"]: judge_prompt(self.template, row["prompt"], row["response"]) for row in rows}
        keys = {row["id"]: cache_key(cfg.model, filled[row["id"]]) for row in rows}
        cache = self._read_cache()
        if cfg.retry_unparseable:  # a new sample may parse; judge.retry_unparseable=false keeps them
            cache = {key: j for key, j in cache.items() if j["status"] != UNPARSEABLE}
        todo = [row for row in rows if keys[row["id"]] not in cache]
        if len(todo) < len(rows):
            log.info("judge: %d of %d judgements from the cache %s", len(rows) - len(todo), len(rows), self.cache_path)
        failures: dict[str, dict] = {}
        if todo:
            self.endpoint.check_reachable()  # only now: a warm cache needs no server
            appender = Appender(self.cache_path) if self.cache_path else None
            bar = tqdm(total=len(todo), desc=f"judging ({cfg.model})")

            async def work(client, row):
                attempts, reply = 0, ""
                for attempts in range(1, cfg.parse_retries + 2):
                    reply = await llm.chat(client, self.endpoint, cfg.model, filled[row["id"]],
                                           temperature=cfg.temperature, max_tokens=cfg.max_tokens)
                    try:
                        return {"status": OK, "scores": parse_judgement(reply), "reply": reply, "attempts": attempts}
                    except Unparseable as err:
                        problem = str(err)
                log.warning("judge: unparseable reply for id %s after %d attempts (%s)", row["id"], attempts, problem)
                return {"status": UNPARSEABLE, "scores": None, "reply": reply, "error": problem, "attempts": attempts}

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


def build_judge(judge_cfg, template: str, cache_dir: str) -> Judge | None:
    if judge_cfg.kind == "none":
        return None
    if judge_cfg.kind != "openai":
        raise UserError(f"unknown judge.kind {judge_cfg.kind!r}; choose none or openai")
    cache = None
    if judge_cfg.cache:
        safe = re.sub(r"[^A-Za-z0-9._-]+", "_", judge_cfg.model or "judge")
        cache = Path(cache_dir).expanduser() / "judge" / f"{safe}.jsonl"
    return Judge(judge_cfg, template, cache)
