"""task=dpo_pairs: preference pairs for DPO, as LongWriter made them (docs/science.md section 5).

For every prompt, `pairs.samples` answers are sampled from the model (model.path, or an API model
with generation=openai), each is scored with the length score S_l against the prompt's required
length and the quality judge's S_q, and the best becomes *chosen* (a shared best goes to the sample
nearest the required length), one of the others drawn at random (seeded by the run's seed and the
prompt's id) *rejected*.

Files under the run directory (all resumable: a rerun samples and judges only what is missing):
- pairs/samples.jsonl      every sample, id "<prompt id>#<k>" (appended as generated)
- pairs/judgements.jsonl   the judge's replies, keyed by (judge model, filled judge prompt)
- pairs.jsonl              one line per pair (fields in `pair_record`)
- pairs_stats.json         counts (prompts, samples, pairs, drops by reason, length sources) and means
- pairs_scores.png         chosen vs rejected score per pair
"""

from __future__ import annotations

import json
import logging
import math
import random
import re
import statistics
import unicodedata
from pathlib import Path

from lw.jsonl import read_resumable, write_jsonl
from lw.prompts import read_prompt_file
from lw.words import count_words, length_score
from lw.errors import Incomplete, UserError

log = logging.getLogger(__name__)

RULES = ("mean", "length", "quality")
RULE_NAMES = {"mean": "mean(S_l,S_q)", "length": "S_l", "quality": "S_q"}
FROM_FIELD, FROM_TEXT, UNKNOWN = "field", "text", "unknown"  # where a prompt's required length came from
STAT_OF_SOURCE = {FROM_FIELD: "length_from_field", FROM_TEXT: "length_from_text", UNKNOWN: "length_unknown"}
SOURCE_LABELS = {FROM_FIELD: "length given", FROM_TEXT: "length read from the prompt", UNKNOWN: "no length: S_q"}
_TIE = 1e-9  # scores this close are equal (float noise of the means)


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


# --- prompts --------------------------------------------------------------------------------------

def read_prompts(path: str | Path, setting: str = "pairs.prompts") -> list[dict]:
    """{"id", "prompt", "length" (or None)} per line of a prompts JSONL: `prompt` (optional `id`,
    `length`), or a messages/ShareGPT row whose one user turn is the prompt. Bad lines fail named."""
    from lw.eval.benchmarks import parse_length

    def check_id(pid, where: str) -> str:
        if "#" in str(pid):
            raise UserError(f"{where}: field 'id' must not contain '#' (sample ids are '<id>#<k>'): {str(pid)!r}")
        return str(pid)

    rows = read_prompt_file(path, setting, "field 'prompt' must be a non-empty string", check_id)
    return [{"id": r["id"], "prompt": r["prompt"],
             "length": None if r["row"].get("length") is None else parse_length(r["row"]["length"], r["where"])}
            for r in rows]


def benchmark_prompts(cfg) -> list[dict]:
    """The first configured eval benchmark's prompts (each once), when pairs.prompts is null."""
    from lw.eval.benchmarks import load_items

    if not cfg.eval:
        raise UserError("task=dpo_pairs needs pairs.prompts=FILE (a JSONL of prompt and optional length), "
                         "or an eval benchmark whose prompts it samples")
    name = next(iter(cfg.eval))
    prompts, seen = [], set()
    for item in load_items(cfg.eval[name], cfg.cache_dir):
        if item["prompt"] not in seen:
            seen.add(item["prompt"])
            prompts.append({"id": f"{name}-{len(prompts)}", "prompt": item["prompt"], "length": item.get("length")})
    log.info("pairs: %d prompts of eval benchmark %s", len(prompts), name)
    return prompts


# --- scoring and selection ------------------------------------------------------------------------

def combine(rule: str, s_l: float | None, s_q: float | None) -> float | None:
    """One sample's score under `rule`; None when a score the rule needs is missing. Without a
    required length S_l is None and every rule falls back to S_q."""
    if s_l is None or rule == "quality":
        return s_q
    if rule == "length":
        return s_l
    return None if s_q is None else (s_l + s_q) / 2


def closeness(required: int | float, produced: int | float) -> float:
    """How near a sample came to its required length: -|log(produced / required)|, 0 at the length,
    the same for twice and half of it; -inf for an empty one. It breaks ties of the score: S_l is 0 for
    every sample under a third (or over 4x) of the length, and this still ranks them."""
    return -abs(math.log(produced / required)) if produced > 0 else -math.inf


def best_is_shared(scores: list[float | None]) -> bool:
    """Whether two or more scored samples share the best score (a tie before any tie-break)."""
    scored = [s for s in scores if s is not None]
    return len(scored) > 1 and sum(1 for s in scored if abs(s - max(scored)) <= _TIE) > 1


def select_pair(scores: list[float | None], seed: int, prompt_id: str, min_margin: float = 0.0,
                near: list[float] | None = None):
    """(chosen index, rejected index, None) or (None, None, drop reason) for one prompt's samples.

    chosen: the best score, a shared best broken by `near` (each sample's `closeness`, None: no
    tie-break); rejected: drawn among the other scored samples with random.Random(f"{seed}:{prompt_id}").
    Dropped: fewer than two scored samples ("failed"), the best shared by two samples that `near` does
    not separate ("tie"), or chosen and rejected no more than min_margin apart in score ("margin"; a
    rejected equal in score but less near passes only with min_margin 0).
    """
    scored = [i for i, s in enumerate(scores) if s is not None]
    if len(scored) < 2:
        return None, None, "failed"
    top = max(scores[i] for i in scored)
    tied = [i for i in scored if abs(scores[i] - top) <= _TIE]
    if len(tied) > 1 and near is not None:
        nearest = max(near[i] for i in tied)
        tied = [i for i in tied if near[i] >= nearest - _TIE]
    if len(tied) > 1:
        return None, None, "tie"
    best = tied[0]
    others = [i for i in scored if i != best]
    rejected = random.Random(f"{seed}:{prompt_id}").choice(others)
    gap = scores[best] - scores[rejected]
    if (gap <= _TIE and min_margin > 0) or _TIE < gap <= min_margin:
        return None, None, "margin"
    return best, rejected, None


def _round(x: float | None) -> float | None:
    return None if x is None else round(x, 4)


def _check(cfg) -> None:
    p = cfg.pairs
    if p.rule not in RULES:
        raise UserError(f"pairs.rule must be one of {', '.join(RULES)}, got {p.rule!r}")
    if p.samples < 2:
        raise UserError(f"pairs.samples must be at least 2 (a pair needs two answers), got {p.samples}")
    if p.min_margin < 0:
        raise UserError(f"pairs.min_margin must be >= 0, got {p.min_margin}")
    if cfg.judge.kind == "none" and p.rule != "length":
        raise UserError(f"pairs.rule={p.rule} needs the quality judge S_q: set judge=openai (any "
                         f"OpenAI-compatible endpoint), or pairs.rule=length to rank by S_l alone")
    if cfg.generation.temperature <= 0:
        raise UserError("task=dpo_pairs samples several answers per prompt: generation.temperature must be > 0 "
                         f"(got {cfg.generation.temperature}), else every sample is the same")
    if cfg.model.path is None and cfg.generation.backend != "openai":
        raise UserError("task=dpo_pairs needs model.path (the SFT checkpoint, e.g. runs/NAME/model, or a hub "
                         "id), or generation=openai with generation.model")


def _judge(cfg, run_dir: Path):
    """The quality judge (None with judge=none), its judgements appended to the run's own
    pairs/judgements.jsonl (so the run resumes whatever judge.cache says)."""
    from lw.eval.run import longbench_judge

    return longbench_judge(cfg, run_dir / "pairs" / "judgements.jsonl")


def score_samples(q: dict, by_id: dict, judgements: dict, p) -> tuple[list[dict], list[float | None]]:
    """One prompt's samples scored (S_l, S_q, the rule's score; None for an empty answer or a missing
    S_q the rule needs) and each sample's closeness to the required length (None without one)."""
    from lw.eval.judge import OK  # imported where a task runs, as run_dpo_pairs does
    from lw.eval.scoring import quality_scores

    sample_scores, near = [], []
    for k in range(p.samples):
        row = by_id[f"{q['id']}#{k}"]
        produced = count_words(row["response"])
        s_l = length_score(q["length"], produced) if q["length"] is not None else None
        j = judgements.get(row["id"])
        s_q = quality_scores([j])["S_q"] if j is not None and j["status"] == OK else None
        score = combine(p.rule, s_l, s_q) if row["response"].strip() else None
        near.append(closeness(q["length"], produced) if q["length"] is not None else None)
        sample_scores.append({"k": k, "produced": produced, "S_l": _round(s_l), "S_q": _round(s_q),
                              "score": _round(score), "judge_status": j["status"] if j else None})
    return sample_scores, near


def pair_record(q: dict, sample_scores: list[dict], chosen: int, rejected: int, shared: bool, by_id: dict,
                rule_name: str) -> dict:
    """The line of pairs.jsonl for one prompt: both answers, every sample's scores and why this pair."""
    rule = RULE_NAMES[rule_name] if q["length"] is not None else "S_q (no required length)"
    best, worse = sample_scores[chosen]["score"], sample_scores[rejected]["score"]
    scored = sum(1 for s in sample_scores if s["score"] is not None)
    return {
        "id": q["id"], "prompt": q["prompt"],
        "chosen": by_id[f"{q['id']}#{chosen}"]["response"],
        "rejected": by_id[f"{q['id']}#{rejected}"]["response"],
        "required_length": q["length"], "length_source": q["source"],
        "scores": sample_scores, "chosen_index": chosen, "rejected_index": rejected,
        "reason": f"best of {scored} by {rule}={best:.1f}"
                  f"{' (a shared best, the nearest to the length)' if shared else ''}; rejected "
                  f"({worse:.1f}) drawn among {scored - 1} others",
    }


def run_dpo_pairs(cfg, run_dir: Path, tracker, tokenizer=None) -> dict:
    """task=dpo_pairs: sample, score, choose and reject; pairs.jsonl, pairs_stats.json, the plot."""
    from lw.eval.generate import build_backend, generate
    from lw.eval.judge import FAILED

    _check(cfg)
    p = cfg.pairs
    prompts = read_prompts(p.prompts) if p.prompts else benchmark_prompts(cfg)
    stats = {"prompts": len(prompts), "length_from_field": 0, "length_from_text": 0, "length_unknown": 0}
    for prompt in prompts:
        if prompt["length"] is not None:
            prompt["source"] = FROM_FIELD
        else:
            prompt["length"] = required_length(prompt["prompt"])
            prompt["source"] = FROM_TEXT if prompt["length"] is not None else UNKNOWN
        stats[STAT_OF_SOURCE[prompt["source"]]] += 1
    judge = _judge(cfg, run_dir)  # a bad key, URL or template fails before the model loads
    scorable = prompts
    stats["dropped_no_length"] = 0
    if judge is None:  # rule=length: a prompt without a required length cannot be ranked
        scorable = [q for q in prompts if q["length"] is not None]
        stats["dropped_no_length"] = len(prompts) - len(scorable)
        if stats["dropped_no_length"]:
            log.warning("pairs: %d prompts name no required length and there is no judge: not sampled",
                        stats["dropped_no_length"])

    items = [{"id": f"{q['id']}#{k}", "prompt": q["prompt"]} for q in scorable for k in range(p.samples)]
    pairs_dir = run_dir / "pairs"
    samples_path = pairs_dir / "samples.jsonl"
    done = read_resumable(samples_path)
    # The model loads only when something is left to sample.
    backend = build_backend(cfg, cfg.model.path) if any(i["id"] not in done for i in items) else None
    rows = generate(backend, items, samples_path)
    by_id = {row["id"]: row for row in rows}

    nonempty = [row for row in rows if row["response"].strip()]
    judgements = {}
    if judge is not None and nonempty:
        judgements = {j["id"]: j for j in judge.judge(nonempty)}

    records, chosen_scores, rejected_scores, plot_points = [], [], [], []
    drops = {"failed": 0, "tie": 0, "margin": 0}
    samples_failed = tied_by_score = ties_broken = 0
    for q in scorable:
        sample_scores, near = score_samples(q, by_id, judgements, p)
        scores = [s["score"] for s in sample_scores]
        samples_failed += sum(score is None for score in scores)
        # S_q ranks by quality alone (rule=quality, or no required length): its ties stay ties.
        near = near if p.rule != "quality" and q["length"] is not None else None
        chosen, rejected, reason = select_pair(scores, cfg.seed, q["id"], p.min_margin, near)
        shared = best_is_shared(scores)
        tied_by_score += shared
        ties_broken += shared and reason != "tie"
        if reason:
            drops[reason] += 1
            continue
        records.append(pair_record(q, sample_scores, chosen, rejected, shared, by_id, p.rule))
        best, worse = sample_scores[chosen]["score"], sample_scores[rejected]["score"]
        chosen_scores.append(best)
        rejected_scores.append(worse)
        plot_points.append((best, worse, q["source"]))

    write_jsonl(records, run_dir / "pairs.jsonl")
    judge_failed = sum(1 for j in judgements.values() if j["status"] == FAILED)
    stats.update({"samples": len(rows), "samples_failed": samples_failed, "judge_failed": judge_failed,
                  "pairs": len(records), "tied_by_score": tied_by_score, "ties_broken_by_length": ties_broken,
                  **{f"dropped_{k}": v for k, v in drops.items()}})
    if records:
        stats["mean_chosen_score"] = statistics.fmean(chosen_scores)
        stats["mean_rejected_score"] = statistics.fmean(rejected_scores)
        stats["mean_margin"] = stats["mean_chosen_score"] - stats["mean_rejected_score"]
    (run_dir / "pairs_stats.json").write_text(json.dumps(stats, indent=2, sort_keys=True) + "\n")
    log.info("pairs: %d pairs from %d prompts (%s)", len(records), len(prompts),
             ", ".join(f"{k} {v}" for k, v in stats.items() if k.startswith("dropped_") and v))
    plot = score_scatter(plot_points, run_dir / "pairs_scores.png",
                         f"{cfg.run_name}: chosen vs rejected ({RULE_NAMES[p.rule]})")
    metrics = {f"pairs/{k}": v for k, v in stats.items()}
    tracker.log(metrics)
    tracker.image("pairs/scores_scatter", plot)
    if judge_failed:
        raise Incomplete(f"pairs: {judge_failed} of {len(judgements)} judge requests failed after their retries, so "
                         f"their samples were not ranked; the samples and the finished judgements are kept in "
                         f"{pairs_dir}: rerun the same command to ask the judge only for the rest", metrics)
    return metrics


def score_scatter(points: list[tuple[float, float, str]], path: Path, title: str) -> Path:
    """Chosen (x) vs rejected (y) score per pair, with y = x: every point lies below the line."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 5))
    for source in sorted({s for _, _, s in points}):
        xy = [(x, y) for x, y, s in points if s == source]
        ax.scatter(*zip(*xy), s=14, alpha=0.6, label=SOURCE_LABELS[source])
    ax.plot([0, 100], [0, 100], "k--", lw=1, label="y = x")
    ax.set_xlim(0, 100)
    ax.set_ylim(0, 100)
    ax.set_xlabel("chosen score")
    ax.set_ylabel("rejected score")
    ax.set_title(title if points else f"{title}: no pairs")
    ax.legend(loc="upper left")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path

