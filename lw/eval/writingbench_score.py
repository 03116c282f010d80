"""A run's WritingBench length subset: queries too long for the model's context set aside, the
responses judged per criterion (with judge=writingbench), the official R and C, and lw's own length
adherence; files under the benchmark's directory and W&B (docs/science.md, "WritingBench's length
subset").

Files: judgements.jsonl (one per query and criterion: status, score, reason, reply),
length_requirements.jsonl (every query's parsed length requirement, its produced length and lw's
length score), skipped.jsonl (the queries longer than the model's context, never truncated).
"""

from __future__ import annotations

import json
import logging
import statistics
from collections import defaultdict
from pathlib import Path

from lw.eval.judge import FAILED, OK, UNPARSEABLE
from lw.eval.length_requirement import parse_requirement, requirement_score
from lw.eval.writingbench import groups, official_scores, query_scores
from lw.eval.writingbench_judge import criterion_rows, response_to_judge
from lw.jsonl import write_jsonl
from lw.run_dir import judgements_file, length_requirements_file, skipped_file
from lw.words import count_words

log = logging.getLogger(__name__)

COLUMNS = ["id", "language", "domain1", "domain2", "R", "C", "requirement", "produced", "S_l", "prompt", "response"]


def drop_overlong(backend, items: list[dict], bench_dir: Path) -> tuple[list[dict], list[dict]]:
    """(items whose prompt fits the model's context, those that do not), the latter written to
    skipped.jsonl. A backend that does not know its context (openai) keeps every item: its server
    refuses what does not fit, counted as a failed generation."""
    context = getattr(backend, "context_length", None)
    if not context:
        return items, []
    kept, skipped = [], []
    for item in items:
        tokens = backend.prompt_length(item["prompt"])
        if tokens >= context:
            skipped.append({"id": item["id"], "prompt_tokens": tokens, "context": context})
        else:
            kept.append(item)
    if skipped:
        write_jsonl(skipped, skipped_file(bench_dir))
        log.warning("%d of %d queries are longer than the model's context of %d tokens: skipped, not truncated "
                    "(see %s)", len(skipped), len(items), context, skipped_file(bench_dir))
    return kept, skipped


def query_records(rows: list[dict], judgements: list[dict] | None) -> list[dict]:
    """One record per query: its official scores (with judgements) and lw's length adherence."""
    by_query: dict[str, dict] = defaultdict(dict)
    for judgement in judgements or []:
        query_id, name = judgement["id"].split("#", 1)
        by_query[query_id][name] = judgement
    records = []
    for row in rows:
        produced = count_words(response_to_judge(row["response"]))
        requirement = parse_requirement(row["prompt"])
        s_l = requirement_score(requirement, produced) if requirement["parsed"] else None
        official = query_scores(row, by_query[row["id"]]) if judgements is not None else \
            {"R": None, "C_scores": [], "criterion_scores": {}}
        c = statistics.fmean(official["C_scores"]) if official["C_scores"] else None
        records.append({**{k: row[k] for k in ("id", "language", "domain1", "domain2", "prompt", "response")},
                        **official, "C": c, "requirement": requirement, "produced": produced, "S_l": s_l,
                        "length": requirement.get("low") or requirement.get("high")})
    return records


def writingbench_metrics(records: list[dict], prefix: str, judgements: list[dict] | None, skipped: int) -> dict:
    """Flat metrics: per group (all, language, domain1) n, lw's length (parsed, lw_S_l) and with a
    judge the official R and C (1-10 and x10); the judgements' and the skipped queries' counts."""
    metrics: dict = {f"{prefix}/skipped_context": skipped,
                     f"{prefix}/max_output_words": max((r["produced"] for r in records), default=0)}
    for key, positions in groups(records, prefix):
        group = [records[i] for i in positions]
        parsed = [r["S_l"] for r in group if r["S_l"] is not None]
        metrics[f"{key}/n"] = len(group)
        metrics[f"{key}/lw_length_parsed"] = len(parsed)
        if parsed:
            metrics[f"{key}/lw_S_l"] = statistics.fmean(parsed)
        if judgements is not None:
            metrics.update({f"{key}/{k}": v for k, v in official_scores(group).items()})
    metrics[f"{prefix}/lw_length_parse_rate"] = metrics[f"{prefix}/lw_length_parsed"] / max(len(records), 1)
    if judgements is not None:
        statuses = [j["status"] for j in judgements]
        metrics.update({f"{prefix}/judge_judged": statuses.count(OK), f"{prefix}/judge_unparseable":
                        statuses.count(UNPARSEABLE), f"{prefix}/judge_failed": statuses.count(FAILED),
                        f"{prefix}/queries_incomplete": sum(r["R"] is None for r in records)})
        metrics.setdefault(f"{prefix}/queries_scored", 0)
    return metrics


def score_writingbench(name: str, rows: list[dict], bench_dir: Path, tracker, judge=None,
                       skipped: int = 0) -> tuple[dict, list[dict]]:
    """Metrics and per-query records; writes judgements.jsonl and length_requirements.jsonl."""
    bench_dir.mkdir(parents=True, exist_ok=True)
    judgements = None
    if judge is not None:
        asked = criterion_rows(rows)
        judgements = judge.judge(asked)
        write_jsonl(({"query_id": a["query_id"], "criterion": a["name"], **j} for a, j in zip(asked, judgements)),
                    judgements_file(bench_dir))
    records = query_records(rows, judgements)
    write_jsonl(({"id": r["id"], "language": r["language"], **r["requirement"], "produced": r["produced"],
                  "lw_S_l": r["S_l"]} for r in records), length_requirements_file(bench_dir))
    metrics = writingbench_metrics(records, name, judgements, skipped)
    if judgements is not None and (metrics[f"{name}/judge_unparseable"] or metrics[f"{name}/judge_failed"]):
        log.warning("%s: %d unparseable and %d failed criterion judgements; their %d queries are left out of R "
                    "and C (see %s)", name, metrics[f"{name}/judge_unparseable"], metrics[f"{name}/judge_failed"],
                    metrics[f"{name}/queries_incomplete"], judgements_file(bench_dir))
    tracker.log(metrics)
    table = [{**r, "requirement": json.dumps(r["requirement"], ensure_ascii=False)} for r in records]
    tracker.table(f"{name}/predictions", table, COLUMNS)
    return metrics, records


def plan_writingbench(cfg, bench, rates: dict, judge_rates: dict | None) -> dict:
    """A dry run's plan of the subset (lw.plan.eval): its queries from the local files, the tokens to
    generate (each answer at its parsed requirement's upper bound, else at generation.max_new_tokens)
    and, with judge=writingbench, one judge call per criterion reading the prompts, query and answer."""
    from lw.errors import UserError
    from lw.eval.writingbench import judge_prompts, load_writingbench_items

    try:
        items = load_writingbench_items(bench, cfg.cache_dir)
    except UserError as err:  # not local: a dry run downloads nothing
        raise UserError(f"dry run: {err}") from None
    cap = cfg.generation.max_new_tokens
    words = []
    for item in items:
        requirement = parse_requirement(item["prompt"])
        words.append(requirement.get("high") or requirement.get("low") if requirement["parsed"] else None)
    generate = sum(cap if w is None else min(cap, round(w * rates[i["language"]])) for i, w in zip(items, words))
    languages = [i["language"] for i in items]
    plan = {"kind": bench.kind, "prompts": len(items), "counted": "read",
            "languages": {lang: languages.count(lang) for lang in sorted(set(languages))},
            "tokens_to_generate": round(generate),
            "assumptions": [f"{bench.kind}: an answer is as long as its parsed length requirement's upper bound, "
                            f"generation.max_new_tokens where none parses ({words.count(None)} of {len(items)})"]}
    if judge_rates and cfg.judge.kind == "writingbench":
        system, template = judge_prompts(bench, cfg.cache_dir)
        fixed = count_words(system) + count_words(template)
        judge_input = sum(judge_rates[i["language"]] * (fixed + count_words(i["prompt"]) + (w or cap)
                                                        + count_words(str(c)))
                          for i, w in zip(items, words) for c in i["criteria"])
        plan.update(judge_calls=sum(len(i["criteria"]) for i in items), judge_input_tokens=round(judge_input))
    return plan
