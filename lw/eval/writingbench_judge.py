"""WritingBench's criteria judge (`judge=writingbench`): each of a query's criteria scored 1-10 by an
OpenAI-compatible endpoint (the released critic model behind `vllm serve`, or any API model) with
the official system prompt and template (docs/science.md, "WritingBench's length subset").

It is lw's LongBench judge (lw.eval.judge.Judge: concurrency, retries, a cache appended and
fsynced per judgement, failures counted and never scored) with the official prompts and the
official reply format. A reply counts only as JSON, after the official stripping of the characters
'json|`' from its ends, holding an integer `score` from 1 to 10 and a string `reason`. The official
script passes a reply that is not JSON to Python's eval() (evaluate_benchmark.py line 61); here it
is an unparseable reply, asked again up to judge.attempts times and then counted.
"""

from __future__ import annotations

import json
import logging
import re
from pathlib import Path

from lw.errors import UserError
from lw.eval.judge import OK, UNPARSEABLE, Judge, cache_key
from lw.eval.writingbench import THINK_END

log = logging.getLogger(__name__)

KIND = "writingbench"
# evaluate_benchmark.py lines 26 and 58: str.strip of these characters, not of whitespace.
OFFICIAL_STRIP = "json|```"


def response_to_judge(response: str) -> str:
    """The text after the first `</think>\\n\\n`, if any (evaluate_benchmark.py lines 11-18)."""
    position = response.find(THINK_END)
    return response[position + len(THINK_END):] if position != -1 else response


def parse_criterion_reply(reply: str) -> dict:
    """{"score", "reason"} of a reply, or raises ValueError saying why it is not one. Surrounding
    whitespace is dropped before the official stripping (which keeps it, and then fails)."""
    body = reply.strip().strip(OFFICIAL_STRIP)
    try:
        value = json.loads(body)
    except json.JSONDecodeError as err:
        raise ValueError(f"not JSON after stripping 'json|`' ({err.msg})") from None
    if not isinstance(value, dict) or "score" not in value or "reason" not in value:
        raise ValueError("not a JSON object with 'score' and 'reason'")
    score = value["score"]
    if isinstance(score, bool) or not isinstance(score, int) or not 1 <= score <= 10:
        raise ValueError(f"score must be an integer from 1 to 10, got {score!r}")
    if not isinstance(value["reason"], str):
        raise ValueError(f"reason must be a string, got {type(value['reason']).__name__}")
    return {"score": score, "reason": value["reason"]}


class CriteriaJudge(Judge):
    """Judges rows {"id", "prompt" (the query), "response", "criterion" (one checklist entry)}."""

    def __init__(self, judge_cfg, prompts: tuple[str, str], cache_path: Path | None):
        super().__init__(judge_cfg, prompts[1], cache_path)
        self.system = prompts[0]

    def fill(self, row: dict) -> str:
        # The official template gets the criterion dict as Python prints it (evaluate_benchmark.py line 52).
        return self.template.format(query=row["prompt"], response=response_to_judge(row["response"]),
                                    criteria=str(row["criterion"]))

    def key(self, filled: str) -> str:
        return cache_key(self.cfg.model, self.system + "\n\n" + filled)

    def read(self, reply: str, seen: dict | None = None) -> dict:
        try:
            return {"status": OK, **parse_criterion_reply(reply)}
        except ValueError as err:
            return {"status": UNPARSEABLE, "score": None, "error": str(err)}


def criterion_rows(rows: list[dict]) -> list[dict]:
    """One judge row per (query, criterion), id "QUERY_ID#CRITERION_NAME"."""
    return [{"id": f"{row['id']}#{criterion['name']}", "query_id": row["id"], "name": criterion["name"],
             "prompt": row["prompt"], "response": row["response"], "criterion": criterion}
            for row in rows for criterion in row["criteria"]]


def build_criteria_judge(judge_cfg, prompts: tuple[str, str], cache_dir: str) -> CriteriaJudge:
    """Its cache: one file per judge model under cache_dir/judge (judge.cache=false: none)."""
    if judge_cfg.kind != KIND:
        raise UserError(f"judge.kind must be {KIND} for WritingBench, got {judge_cfg.kind!r}")
    cache = None
    if judge_cfg.cache:
        safe = re.sub(r"[^A-Za-z0-9._-]+", "_", judge_cfg.model or "judge")
        cache = Path(cache_dir).expanduser() / "judge" / f"writingbench-{safe}.jsonl"
    return CriteriaJudge(judge_cfg, prompts, cache)


def writingbench_judge(cfg, bench_cfg):
    """WritingBench's criteria judge with the official prompts (judge=writingbench), else None."""
    from lw.eval.writingbench import KIND as WRITINGBENCH
    from lw.eval.writingbench import judge_prompts

    if cfg.judge.kind != KIND:
        if cfg.judge.kind != "none":
            log.warning("%s's criteria are scored by judge=writingbench, not judge.kind=%s: its R and C are "
                        "not computed", WRITINGBENCH, cfg.judge.kind)
        return None
    return build_criteria_judge(cfg.judge, judge_prompts(bench_cfg, cfg.cache_dir), cfg.cache_dir)
