"""task=dpo_pairs: preference pairs for DPO, as LongWriter made them (docs/science.md section 5).

For every prompt, `pairs.samples` answers are sampled from the model (model.path, or an API model
with generation=openai), each is scored with the length score S_l against the prompt's required
length and the quality judge's S_q, and the best becomes *chosen* (a shared best goes to the sample
nearest the required length, else to the first of those equally good), one of the worse ones drawn
at random (seeded by the run's seed and the prompt's id) *rejected*.

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
import statistics
from dataclasses import dataclass, field
from pathlib import Path

from lw.data.preference import RULE_NAMES, best_is_shared, best_samples, closeness, combine, select_pair
from lw.data.prompts import FROM_FIELD, FROM_TEXT, UNKNOWN, read_prompts, resolve_lengths
from lw.errors import Incomplete, UserError
from lw.jsonl import read_resumable, write_jsonl
from lw.run_dir import judgements_file, pairs_file, pairs_scores_plot, pairs_stats_file, pairs_work_dir, samples_file
from lw.tasks.registry import Task
from lw.words import count_words, length_score

log = logging.getLogger(__name__)

SOURCE_LABELS = {FROM_FIELD: "length given", FROM_TEXT: "length read from the prompt", UNKNOWN: "no length: S_q"}


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


def _round(x: float | None) -> float | None:
    return None if x is None else round(x, 4)


def check(cfg, run_dir: Path) -> None:
    """The settings, the prompts file and the judge's, before any sampling and before W&B starts
    (pairs.rule's choices are typed)."""
    p = cfg.pairs
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
    if p.prompts:
        read_prompts(p.prompts)
    _judge(cfg, run_dir)  # a missing key, a bad URL or template


def _judge(cfg, run_dir: Path):
    """The quality judge (None with judge=none), its judgements appended to the run's own
    pairs/judgements.jsonl (so the run resumes whatever judge.cache says)."""
    from lw.eval.judge import longbench_judge

    return longbench_judge(cfg, judgements_file(pairs_work_dir(run_dir)))


def score_samples(q: dict, by_id: dict, judgements: dict, p) -> tuple[list[dict], list[float | None]]:
    """One prompt's samples scored (S_l, S_q, the rule's score; None for an empty answer or a missing
    S_q the rule needs) and each sample's closeness to the required length (None without one)."""
    from lw.eval.judge import OK  # imported where a task runs, as `run` does
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


def pair_record(q: dict, sample_scores: list[dict], chosen: int, rejected: int, best: list[int], by_id: dict,
                rule_name: str) -> dict:
    """The line of pairs.jsonl for one prompt: both answers, every sample's scores and why this pair
    (`best`: the samples equally good at the top, as best_samples gives them)."""
    rule = RULE_NAMES[rule_name] if q["length"] is not None else "S_q (no required length)"
    top, worse = sample_scores[chosen]["score"], sample_scores[rejected]["score"]
    scores = [s["score"] for s in sample_scores]
    scored = sum(score is not None for score in scores)
    shared = ""
    if best_is_shared(scores):
        shared = (" (a shared best, the nearest to the length)" if len(best) == 1
                  else f" (a shared best, the first of {len(best)} equally good)")
    return {
        "id": q["id"], "prompt": q["prompt"],
        "chosen": by_id[f"{q['id']}#{chosen}"]["response"],
        "rejected": by_id[f"{q['id']}#{rejected}"]["response"],
        "required_length": q["length"], "length_source": q["source"],
        "scores": sample_scores, "chosen_index": chosen, "rejected_index": rejected,
        "reason": f"best of {scored} by {rule}={top:.1f}{shared}; rejected ({worse:.1f}) drawn among "
                  f"{scored - len(best)} others",
    }


def rankable(prompts: list[dict], judge) -> list[dict]:
    """The prompts whose samples can be ranked: every one with a judge; without one (rule=length)
    only those with a required length."""
    if judge is not None:
        return prompts
    kept = [q for q in prompts if q["length"] is not None]
    if len(kept) < len(prompts):
        log.warning("pairs: %d prompts name no required length and there is no judge: not sampled",
                    len(prompts) - len(kept))
    return kept


def sample(cfg, prompts: list[dict], samples_path: Path) -> list[dict]:
    """`pairs.samples` answers per prompt, id "<prompt id>#<k>", resumed from samples_path."""
    from lw.eval.generate import build_backend, generate

    items = [{"id": f"{q['id']}#{k}", "prompt": q["prompt"]} for q in prompts for k in range(cfg.pairs.samples)]
    done = read_resumable(samples_path)
    # The model loads only when something is left to sample.
    backend = build_backend(cfg, cfg.model.path) if any(i["id"] not in done for i in items) else None
    return generate(backend, items, samples_path)


def judge_samples(judge, rows: list[dict]) -> dict:
    """The judge's judgement of every non-empty sample, by sample id ({} without a judge)."""
    nonempty = [row for row in rows if row["response"].strip()]
    if judge is None or not nonempty:
        return {}
    return {j["id"]: j for j in judge.judge(nonempty)}


@dataclass
class Selection:
    """The pairs chosen from the scored samples, and the counts of what did not make one."""

    records: list[dict] = field(default_factory=list)  # the lines of pairs.jsonl (`pair_record`)
    drops: dict = field(default_factory=lambda: {"failed": 0, "tie": 0, "margin": 0})  # prompts, by reason
    samples_failed: int = 0  # samples without a score (empty, or without the S_q the rule needs)
    tied_by_score: int = 0  # prompts whose best score two samples share
    ties_broken: int = 0  # of those, the ones the nearness to the length decided

    def stats(self) -> dict:
        chosen = [r["scores"][r["chosen_index"]]["score"] for r in self.records]
        rejected = [r["scores"][r["rejected_index"]]["score"] for r in self.records]
        stats = {"samples_failed": self.samples_failed, "pairs": len(self.records),
                 "tied_by_score": self.tied_by_score, "ties_broken_by_length": self.ties_broken,
                 **{f"dropped_{k}": v for k, v in self.drops.items()}}
        if self.records:
            stats["mean_chosen_score"] = statistics.fmean(chosen)
            stats["mean_rejected_score"] = statistics.fmean(rejected)
            stats["mean_margin"] = stats["mean_chosen_score"] - stats["mean_rejected_score"]
        return stats


def select_pairs(prompts: list[dict], by_id: dict, judgements: dict, p, seed: int) -> Selection:
    """Score each prompt's samples (by_id: sample id -> row) and choose its pair, or count its drop."""
    selection = Selection()
    for q in prompts:
        sample_scores, near = score_samples(q, by_id, judgements, p)
        scores = [s["score"] for s in sample_scores]
        selection.samples_failed += sum(score is None for score in scores)
        # S_q ranks by quality alone (rule=quality, or no required length): its ties stay ties.
        near = near if p.rule != "quality" and q["length"] is not None else None
        chosen, rejected, reason = select_pair(scores, seed, q["id"], p.min_margin, near)
        shared = best_is_shared(scores)
        best = best_samples(scores, near) if shared or not reason else []
        selection.tied_by_score += shared
        selection.ties_broken += shared and len(best) == 1  # without `near`, a shared best stays shared
        if reason:
            selection.drops[reason] += 1
        else:
            selection.records.append(pair_record(q, sample_scores, chosen, rejected, best, by_id, p.rule))
    return selection


def write_pairs(cfg, run_dir: Path, records: list[dict], stats: dict, tracker) -> dict:
    """pairs.jsonl, pairs_stats.json and the scatter plot; the stats logged as pairs/<key>."""
    write_jsonl(records, pairs_file(run_dir))
    pairs_stats_file(run_dir).write_text(json.dumps(stats, indent=2, sort_keys=True) + "\n")
    log.info("pairs: %d pairs from %d prompts (%s)", len(records), stats["prompts"],
             ", ".join(f"{k} {v}" for k, v in stats.items() if k.startswith("dropped_") and v))
    points = [(r["scores"][r["chosen_index"]]["score"], r["scores"][r["rejected_index"]]["score"],
               r["length_source"]) for r in records]
    plot = score_scatter(points, pairs_scores_plot(run_dir),
                         f"{cfg.run_name}: chosen vs rejected ({RULE_NAMES[cfg.pairs.rule]})")
    metrics = {f"pairs/{k}": v for k, v in stats.items()}
    tracker.log(metrics)
    tracker.image("pairs/scores_scatter", plot)
    return metrics


def run(cfg, run_dir: Path, tracker, tokenizer=None) -> dict:
    """task=dpo_pairs: resolve lengths, sample, score, select, write (pairs.jsonl, pairs_stats.json, the plot)."""
    from lw.eval.judge import FAILED

    p = cfg.pairs
    prompts = read_prompts(p.prompts) if p.prompts else benchmark_prompts(cfg)
    sources, counts = resolve_lengths(prompts)
    for prompt, source in zip(prompts, sources):
        prompt["source"] = source
    stats = {"prompts": len(prompts), **counts}
    judge = _judge(cfg, run_dir)  # a bad key, URL or template fails before the model loads
    scorable = rankable(prompts, judge)
    stats["dropped_no_length"] = len(prompts) - len(scorable)
    pairs_dir = pairs_work_dir(run_dir)
    rows = sample(cfg, scorable, samples_file(pairs_dir))
    judgements = judge_samples(judge, rows)
    selection = select_pairs(scorable, {row["id"]: row for row in rows}, judgements, p, cfg.seed)
    judge_failed = sum(1 for j in judgements.values() if j["status"] == FAILED)
    stats.update({"samples": len(rows), "judge_failed": judge_failed, **selection.stats()})
    metrics = write_pairs(cfg, run_dir, selection.records, stats, tracker)
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



TASK = Task(run=run, summary="preference pairs from model.path's own samples, scored by S_l and the judge: "
                             "pairs.prompts=FILE", check=check)
