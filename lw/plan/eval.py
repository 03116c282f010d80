"""`dry_run=true` with task=eval: what an evaluation would generate and judge, and what the judge
would cost, computed offline without loading any weights.

Per benchmark: its prompts (the file from `eval.<name>.data_dir` or the download cache, else the
official LongBench-Write's counts below), the tokens to generate, estimated as each answer
reaching its required length (counted words x `plan.tokens_per_word` of the model's tokenizer
family, capped at `generation.max_new_tokens`), and with a judge on LongBench-Write one judge call
per answer (at least; up to `judge.attempts` when replies do not parse), each reading judge.txt,
the prompt and the answer (in the judge's tokens per word) and replying `plan.judge_reply_tokens`,
priced at `judge.price_input_per_million` / `judge.price_output_per_million`.
"""

from __future__ import annotations

import json
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from lw.errors import UserError
from lw.eval.benchmarks import DEFAULT_FILES, JUDGE_TEMPLATE, OFFICIAL_COMMIT, load_items, toy_ruler_items
from lw.models.loading import model_config  # from model.arch or a local checkpoint, no weights
from lw.plan.training import write_plan
from lw.words import count_words, language_of

# The official LongBench-Write at OFFICIAL_COMMIT (evaluation/longbench_write.jsonl and judge.txt),
# counted with lw.words.count_words: used when the file is not local, so a compute node plans offline.
OFFICIAL_LONGBENCH_WRITE = {
    "items": 120,
    "en": {"items": 59, "required_words": 129550, "prompt_words": 3059},
    "zh": {"items": 61, "required_words": 203100, "prompt_words": 7478},
    "judge_template_words": 271,
}


def dry_run_eval(cfg: DictConfig, run_dir: Path) -> dict:
    """task=eval's plan: nothing is trained, so no training plan."""
    plan = build_eval_plan(cfg)
    return write_plan(plan, format_eval_plan(plan), run_dir)


def build_eval_plan(cfg: DictConfig) -> dict:
    family = model_config(cfg).model_type
    rates = _rates(cfg, family)
    judge_rates = _rates(cfg, "judge") if cfg.judge.kind != "none" else None
    benchmarks = {name: plan_benchmark(cfg, name, bench, rates, judge_rates) for name, bench in cfg.eval.items()}
    judge = plan_judge(cfg, benchmarks) if judge_rates else None
    assumptions = [
        f"every answer reaches its required length: {rates['en']:g} tokens per English word and {rates['zh']:g} "
        f"per Chinese character for the {family} tokenizer (plan.tokens_per_word.{family}), capped at "
        f"generation.max_new_tokens={cfg.generation.max_new_tokens}"]
    if judge_rates:
        assumptions.append(
            f"the judge reads judge.txt + prompt + answer at {judge_rates['en']:g} tokens per English word and "
            f"{judge_rates['zh']:g} per Chinese character (plan.tokens_per_word.judge) and replies "
            f"{judge['reply_tokens']} tokens (plan.judge_reply_tokens); the range is 1 to judge.attempts="
            f"{cfg.judge.attempts} calls per answer")
    assumptions += [a for b in benchmarks.values() for a in b.pop("assumptions")]
    return {
        "run_name": cfg.run_name,
        "task": "eval",
        "model": {"name": cfg.model.name, "path": cfg.model.path, "tokenizer_family": family},
        "generation": {"backend": cfg.generation.backend, "temperature": cfg.generation.temperature,
                       "top_p": cfg.generation.top_p, "max_new_tokens": cfg.generation.max_new_tokens},
        "benchmarks": benchmarks,
        "judge": judge,
        "sweep": _sweep(),
        "assumptions": assumptions,
    }


def _rates(cfg: DictConfig, family: str) -> dict:
    table = OmegaConf.to_container(cfg.plan.tokens_per_word, resolve=True)
    if family not in table or not {"en", "zh"} <= set(table[family]):
        raise UserError(f"plan.tokens_per_word has no en and zh figures for {family!r}: add "
                        f"plan.tokens_per_word.{family}={{en: N, zh: N}}")
    return table[family]


def plan_benchmark(cfg: DictConfig, name: str, bench: DictConfig, rates: dict, judge_rates: dict | None) -> dict:
    """Prompts and tokens of one benchmark, from its file when local, else from the official counts."""
    if bench.kind == "writingbench_length":
        from lw.eval.writingbench_score import plan_writingbench

        return plan_writingbench(cfg, bench, rates, judge_rates)
    cap = cfg.generation.max_new_tokens
    judge_rates = judge_rates or {"en": 0.0, "zh": 0.0}
    template = _template_words(cfg, bench) * judge_rates["en"]
    items, counted = _local_items(cfg, bench)
    assumptions = []
    if items is not None:
        languages = [language_of(i["prompt"]) for i in items]
        generate = sum(min(cap, round(i["length"] * rates[l])) for i, l in zip(items, languages))
        # The judge reads the answer as it would be: about its required length.
        judge_input = sum(template + (count_words(i["prompt"]) + i["length"]) * judge_rates[l]
                          for i, l in zip(items, languages))
        prompts, by_language = len(items), {l: languages.count(l) for l in sorted(set(languages))}
    elif bench.kind == "longbench_write" and not bench.file:
        share = min(1.0, (bench.limit or 120) / 120) * bench.samples_per_prompt
        official = {l: OFFICIAL_LONGBENCH_WRITE[l] for l in ("en", "zh")}
        generate = share * sum(o["required_words"] * rates[l] for l, o in official.items())
        judge_input = share * sum(o["items"] * template + (o["prompt_words"] + o["required_words"]) * judge_rates[l]
                                  for l, o in official.items())
        prompts = round(share * OFFICIAL_LONGBENCH_WRITE["items"])
        by_language = {l: round(share * o["items"]) for l, o in official.items()}
        counted = "official counts"
        assumptions.append(f"{name}: the benchmark file is not local, so its size is the official file's at "
                           f"{OFFICIAL_COMMIT[:10]} (per-answer caps not applied)")
    else:
        raise UserError(f"dry run: eval.{name}: the benchmark file is not local; set eval.{name}.data_dir=DIR "
                        "or run once online to fill the cache")
    plan = {"kind": bench.kind, "prompts": prompts, "languages": by_language, "counted": counted,
            "tokens_to_generate": round(generate), "assumptions": assumptions}
    if cfg.judge.kind != "none" and bench.kind == "longbench_write":
        plan.update(judge_calls=prompts, judge_input_tokens=round(judge_input))
    return plan


def _local_items(cfg: DictConfig, bench: DictConfig) -> tuple[list[dict] | None, str]:
    """The benchmark's items when its file is on this machine (no download), else None."""
    if bench.kind == "toy_ruler":
        return toy_ruler_items(bench)[: bench.limit or None], "generated"
    if bench.kind not in DEFAULT_FILES:
        raise UserError(f"unknown benchmark kind {bench.kind!r}")
    filename = bench.file or DEFAULT_FILES[bench.kind]
    if not _local_file(cfg, bench, filename):
        return None, ""
    return load_items(bench, cfg.cache_dir), "read"


def _local_file(cfg: DictConfig, bench: DictConfig, filename: str) -> Path | None:
    folder = Path(bench.data_dir).expanduser() if bench.data_dir else \
        Path(cfg.cache_dir).expanduser() / "benchmarks" / f"longwriter-{OFFICIAL_COMMIT[:10]}"
    path = folder / filename
    return path if path.is_file() else None


def _template_words(cfg: DictConfig, bench: DictConfig) -> int:
    if cfg.judge.kind == "none":
        return 0
    path = Path(cfg.judge.template).expanduser() if cfg.judge.template else _local_file(cfg, bench, JUDGE_TEMPLATE)
    if path is None or not path.is_file():
        return OFFICIAL_LONGBENCH_WRITE["judge_template_words"]
    return count_words(path.read_text(encoding="utf-8"))


def plan_judge(cfg: DictConfig, benchmarks: dict) -> dict:
    judge = cfg.judge
    reply = min(cfg.plan.judge_reply_tokens, judge.max_tokens or cfg.plan.judge_reply_tokens)
    calls = sum(b.get("judge_calls", 0) for b in benchmarks.values())
    input_tokens = sum(b.get("judge_input_tokens", 0) for b in benchmarks.values())
    output_tokens = calls * reply
    cost = (input_tokens * judge.price_input_per_million + output_tokens * judge.price_output_per_million) / 1e6
    return {"model": judge.model, "calls": calls, "max_calls": calls * judge.attempts, "input_tokens": input_tokens,
            "output_tokens": output_tokens, "reply_tokens": reply, "cost_usd": round(cost, 2),
            "max_cost_usd": round(cost * judge.attempts, 2),
            "prices_per_million": [judge.price_input_per_million, judge.price_output_per_million],
            "rules": {"max_tokens": judge.max_tokens, "attempts": judge.attempts, "scores": judge.scores,
                      "extraction": judge.extraction}}


def _sweep() -> dict | None:
    """The multirun this job belongs to: its sweep parameters and its own overrides (None in a single run)."""
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    if not HydraConfig.initialized() or HydraConfig.get().mode != RunMode.MULTIRUN:
        return None
    hydra = HydraConfig.get()
    return {"params": dict(hydra.sweeper.params or {}), "job": list(hydra.overrides.task)}


def format_eval_plan(plan: dict) -> str:
    model, gen = plan["model"], plan["generation"]
    lines = [f"evaluation plan for {plan['run_name']} (dry run: no weights loaded, nothing generated or judged)",
             f"  model      {model['name']} ({model['path'] or 'built from model.tiny'}), {model['tokenizer_family']} "
             f"tokenizer",
             f"  generation {gen['backend']}: temperature {gen['temperature']}, top_p {gen['top_p']}, "
             f"max_new_tokens {gen['max_new_tokens']}"]
    for name, b in plan["benchmarks"].items():
        lines.append(f"  {name:<10} {b['prompts']} prompts ({', '.join(f'{k} {v}' for k, v in b['languages'].items())}; "
                     f"{b['counted']}), about {b['tokens_to_generate']:,} tokens to generate")
    judge = plan["judge"]
    if judge:
        price = judge["prices_per_million"]
        lines.append(f"  judge      {judge['model']}: {judge['calls']} calls (up to {judge['max_calls']}), about "
                     f"{judge['input_tokens']:,} input and {judge['output_tokens']:,} output tokens, "
                     f"${judge['cost_usd']:,.2f} (up to ${judge['max_cost_usd']:,.2f}) at ${price[0]:g}/${price[1]:g} "
                     "per million")
        lines.append("  judge rules " + json.dumps(judge["rules"]))
    if plan["sweep"]:
        lines.append(f"  sweep      this job: {' '.join(plan['sweep']['job'])}; sweep: "
                     + " ".join(f"{k}={v}" for k, v in plan["sweep"]["params"].items()))
    lines.append("  assumptions:")
    lines += [f"    - {a}" for a in plan["assumptions"]]
    return "\n".join(lines)
