"""task=agentwrite: long answers by outline-then-write (AgentWrite, docs/science.md section 3).

For every instruction an OpenAI-compatible model (generation=openai) is asked first for an outline,
one line per paragraph with its main point and its word count, then for each paragraph in order,
given the instruction, the whole outline, the text written so far and the current step. ("Plan" in
lw means only the dry run; the paper calls the outline a plan, and the write prompt's placeholder
stays $PLAN$ as in the official write.txt, so its prompt files work as they are; the built-in prompts
keep their wording, which is what the model is asked.) The paragraphs,
their step labels removed, joined by blank lines, become the answer.

Files under RUN_DIR/agentwrite/ (a rerun of the same command asks only for what is missing):
- steps.jsonl  one line per finished call, appended and fsynced before the instruction's next call:
               {"key": "<id>:<step>", "instruction_id", "step" (0 = the outline), "prompt_sha256", "text"
               (the reply as received), "usage": {"prompt_tokens", "completion_tokens"}, "seconds"}.
               A rerun reuses a call whose prompt hash still matches; a failed call is never written.
- data.jsonl   {"id", "messages": [user: instruction, assistant: answer]}, what `data=jsonl
               data.path=...` trains on; an instruction already there is never written again.
- stats.json   instructions, finished, written, dropped by reason, outline lines without a count,
               tokens in/out and the estimated cost (over every call in steps.jsonl).
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
import time
from pathlib import Path

from lw.data.outline import Step, clean_paragraph, parse_outline
from lw.data.prompts import read_prompt_file
from lw.errors import Incomplete, MissingFile, UserError
from lw.jsonl import Appender, read_resumable
from lw.run_dir import agentwrite_files
from lw.tasks.registry import Task
from lw.words import count_words, language_of

log = logging.getLogger(__name__)

OUTLINE_FIELDS = ("$INST$",)
WRITE_FIELDS = ("$INST$", "$PLAN$", "$TEXT$", "$STEP$")
DROP_REASONS = ("failed_step", "too_many_steps", "too_short", "empty_paragraph", "missing_count",
                "unparseable_outline")

# The project's own wording (not the official LongWriter prompts).
OUTLINE_PROMPT_EN = """Before a long answer to the instruction below is written, it needs a plan.

Instruction:
$INST$

Split the answer into paragraphs and describe each in one line, in order, in exactly this form:
Paragraph N - Main Point: [what this paragraph covers, concretely] - Word Count: [a number from 200 to 1000] words

Choose the word counts so that together they match the length the instruction asks for (or, when it
names none, the length its task calls for). Reply with the plan lines only: no title, no
introduction and no remarks after the plan."""

OUTLINE_PROMPT_ZH = """在为下面的写作指令撰写长篇回答之前，需要先做一份写作计划。

指令：
$INST$

请把回答分成若干段落，按顺序每段写一行，格式严格如下：
第N段 - 主要内容：[这一段具体写什么] - 字数：[200到1000之间的数字]字

各段字数之和应符合指令要求的长度（指令没有说明长度时，按任务本身需要的长度）。只输出计划的各行：不要标题、不要开场白、计划之后也不要任何说明。"""

WRITE_PROMPT_EN = """A long answer to the instruction below is being written one paragraph at a time, following a plan.

Instruction:
$INST$

Plan:
$PLAN$

Text written so far:
$TEXT$

Write the next paragraph only, the one this step of the plan describes:
$STEP$

Keep to its main point and its word count and continue smoothly from the text so far. Reply with
the paragraph alone: no "Paragraph N" label, no repetition of the plan line, no comments before or
after it."""

WRITE_PROMPT_ZH = """下面这条指令的长篇回答正按照计划逐段撰写。

指令：
$INST$

写作计划：
$PLAN$

已经写好的内容：
$TEXT$

现在只写下一段，即计划中的这一步：
$STEP$

紧扣这一段的主要内容和字数要求，并与已写内容自然衔接。只输出这一段正文：不要"第N段"之类的标签，不要重复计划内容，前后都不要加任何说明。"""

NOTHING_YET = {"en": "(nothing yet: this is the first paragraph)", "zh": "（尚无内容：这是第一段）"}


# --- prompts ----------------------------------------------------------------------------------------

def _template(path: str | None, fields: tuple[str, ...], what: str) -> str | None:
    if path is None:
        return None
    file = Path(path).expanduser()
    if not file.is_file():
        raise MissingFile(f"agentwrite.{what}: {file} does not exist")
    text = file.read_text(encoding="utf-8")
    missing = [f for f in fields if f not in text]
    if missing:
        raise UserError(f"agentwrite.{what}: {file} lacks the placeholder(s) {' '.join(missing)} "
                         f"(the {what.split('_')[0]} prompt needs {' '.join(fields)})")
    return text


def outline_prompt(instruction: str, template: str | None = None) -> str:
    template = template or (OUTLINE_PROMPT_ZH if language_of(instruction) == "zh" else OUTLINE_PROMPT_EN)
    return template.replace("$INST$", instruction.strip())


def write_prompt(instruction: str, outline: str, paragraphs: list[str], step: Step,
                 template: str | None = None) -> str:
    lang = language_of(instruction)
    template = template or (WRITE_PROMPT_ZH if lang == "zh" else WRITE_PROMPT_EN)
    so_far = "\n\n".join(paragraphs) if paragraphs else NOTHING_YET[lang]
    # One pass over the placeholders, so an outline or text holding "$STEP$" is not filled again.
    values = {"$INST$": instruction.strip(), "$PLAN$": outline.strip(), "$TEXT$": so_far, "$STEP$": step.text}
    return re.sub(r"\$(?:INST|PLAN|TEXT|STEP)\$", lambda m: values[m.group(0)], template)


def sha256(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


# --- instructions -----------------------------------------------------------------------------------

def read_instructions(path: str | Path) -> list[dict]:
    """{"id", "prompt"} per line: {"prompt": ...} (optional "id"), or a messages/ShareGPT row whose one
    user turn is the instruction. A bad line fails naming file, line and field."""
    def check_id(iid, where: str) -> str:
        # Step keys are "<id>:<step>".
        if not isinstance(iid, (str, int)) or isinstance(iid, bool) or not str(iid).strip() or ":" in str(iid):
            raise UserError(f"{where}: field 'id' must be a non-empty string or integer without ':', got {iid!r}")
        return str(iid)

    rows = read_prompt_file(path, "agentwrite.instructions", "field '{field}' must hold a non-empty instruction",
                            check_id)
    return [{"id": r["id"], "prompt": r["prompt"]} for r in rows]


# --- filters and accounting (plain functions of dicts: tested without a server) ---------------------

class Dropped(Exception):
    """An instruction left out of data.jsonl, for `reason` (one of DROP_REASONS)."""

    def __init__(self, reason: str, detail: str):
        super().__init__(detail)
        self.reason = reason


def outline_drop(steps: list[Step], outline: str, max_steps: int, missing_count: str) -> Dropped | None:
    """Why an outline is not written out (no steps, too many, a missing count under missing_count=drop),
    or None."""
    missing = sum(s.words is None for s in steps)
    if not steps:
        return Dropped("unparseable_outline", f"no outline lines in {outline[:120]!r}")
    if len(steps) > max_steps:
        return Dropped("too_many_steps", f"{len(steps)} steps > agentwrite.max_steps={max_steps}")
    if missing and missing_count == "drop":
        return Dropped("missing_count", f"{missing} of {len(steps)} outline lines without a word count")
    return None


def answer_drop(paragraphs: list[str], steps: list[Step], min_length_ratio: float) -> Dropped | None:
    """Why a written answer is dropped (no paragraph, or under min_length_ratio of the outline's
    word counts), or None."""
    planned = sum(s.words or 0 for s in steps)
    produced = count_words("\n\n".join(paragraphs))
    if not paragraphs or (planned and produced < min_length_ratio * planned):
        return Dropped("too_short", f"{produced} words < {min_length_ratio} x the outline's {planned}")
    return None


def new_stats(instructions: int) -> dict:
    return {"instructions": instructions, "finished": 0, "written": 0, **{f"dropped_{r}": 0 for r in DROP_REASONS},
            "outline_lines_without_count": 0, "calls": 0, "calls_reused": 0, "paragraph_steps": 0}


def count_written(stats: dict) -> None:
    stats["written"] += 1
    stats["finished"] += 1


def count_drop(stats: dict, failures: list[dict], iid: str, err: Dropped) -> None:
    """A dropped instruction, by reason; one whose call failed is not finished (a rerun asks again)."""
    stats[f"dropped_{err.reason}"] += 1
    if err.reason != "failed_step":
        stats["finished"] += 1
    failures.append({"id": iid, "reason": err.reason, "detail": str(err)[:500]})


def answer_row(iid: str, instruction: str, paragraphs: list[str]) -> dict:
    """The line of data.jsonl: the instruction and its answer, the paragraphs joined by blank lines."""
    return {"id": iid, "messages": [{"role": "user", "content": instruction},
                                    {"role": "assistant", "content": "\n\n".join(paragraphs)}]}


# --- the task ---------------------------------------------------------------------------------------

def check(cfg, run_dir: Path) -> None:
    """The settings and files, before any call and before W&B starts (the filters' choices are typed)."""
    a, g = cfg.agentwrite, cfg.generation
    if not a.instructions:
        raise UserError("task=agentwrite needs agentwrite.instructions=FILE (a JSONL of {\"prompt\": ...})")
    if g.backend != "openai":
        raise UserError("task=agentwrite calls an OpenAI-compatible server: set generation=openai with "
                         "generation.base_url and generation.model")
    if not g.model:
        raise UserError("task=agentwrite needs generation.model (the served model's name)")
    if a.max_steps < 1:
        raise UserError(f"agentwrite.max_steps must be at least 1, got {a.max_steps}")
    if a.min_length_ratio < 0:
        raise UserError(f"agentwrite.min_length_ratio must be >= 0, got {a.min_length_ratio}")
    if a.max_tokens < 1:
        raise UserError(f"agentwrite.max_tokens must be at least 1, got {a.max_tokens}")
    _template(a.outline_prompt, OUTLINE_FIELDS, "outline_prompt")
    _template(a.write_prompt, WRITE_FIELDS, "write_prompt")
    read_instructions(a.instructions)


def check_written(written: dict, instructions: list[dict], data_path: Path, instructions_path: str) -> None:
    """data.jsonl must hold the same instruction under each id as the instructions file."""
    by_id = {q["id"]: q for q in instructions}
    for iid, row in written.items():
        user = row.get("messages", [{}])[0].get("content") if row.get("messages") else None
        if iid in by_id and user != by_id[iid]["prompt"]:
            raise UserError(f"{data_path}: id {iid} holds a different instruction than {instructions_path}; "
                             f"use a new run directory for a changed instructions file")


class Writer:
    """One run's calls and counts, shared by the instructions written concurrently (one event loop,
    so no locks): outline, write, filter and record are its steps."""

    def __init__(self, cfg, endpoint, templates: tuple, cache: dict, instructions: int, outputs: tuple, bar):
        self.a, self.model, self.endpoint = cfg.agentwrite, cfg.generation.model, endpoint
        self.outline_template, self.write_template = templates
        self.cache, self.bar = cache, bar
        self.steps_out, self.data_out = outputs  # steps.jsonl, data.jsonl
        self.stats = new_stats(instructions)
        self.failures: list[dict] = []
        self.tokens = {"in": sum(r.get("usage", {}).get("prompt_tokens", 0) for r in cache.values()),
                       "out": sum(r.get("usage", {}).get("completion_tokens", 0) for r in cache.values())}

    def cost(self) -> float:
        return (self.tokens["in"] / 1e6 * self.a.price_input_per_million
                + self.tokens["out"] / 1e6 * self.a.price_output_per_million)

    def show(self) -> None:
        self.bar.set_postfix_str(f"steps {self.stats['paragraph_steps']}, tok in {self.tokens['in']} out "
                                 f"{self.tokens['out']}, ~${self.cost():.4f}", refresh=False)

    async def call(self, client, iid: str, step: int, prompt: str) -> str:
        """The reply to one step's prompt: reused from steps.jsonl while its prompt is unchanged, else
        asked and appended there before the instruction's next call."""
        from lw import llm

        key = f"{iid}:{step}"
        done = self.cache.get(key)
        if done is not None and done.get("prompt_sha256") == sha256(prompt):
            self.stats["calls_reused"] += 1
            return done["text"]
        start = time.time()
        try:
            text, usage = await llm.chat_with_usage(client, self.endpoint, self.model, prompt,
                                                    max_tokens=self.a.max_tokens, temperature=self.a.temperature)
        except llm.ApiError as err:
            raise Dropped("failed_step", f"step {step}: {err}") from None
        record = {"key": key, "instruction_id": iid, "step": step, "prompt_sha256": sha256(prompt),
                  "text": text, "usage": usage, "seconds": round(time.time() - start, 3)}
        self.steps_out.write(record)
        self.cache[key] = record
        self.stats["calls"] += 1
        self.tokens["in"] += usage["prompt_tokens"]
        self.tokens["out"] += usage["completion_tokens"]
        self.show()
        self.bar.refresh()
        return text

    async def outline(self, client, q: dict) -> tuple[str, list[Step]]:
        text = await self.call(client, q["id"], 0, outline_prompt(q["prompt"], self.outline_template))
        steps = parse_outline(text, self.a.plain_lines)
        self.stats["outline_lines_without_count"] += sum(s.words is None for s in steps)
        return text, steps

    async def write(self, client, q: dict, outline: str, steps: list[Step]) -> list[str]:
        """The paragraphs, one call per step, each given the text so far."""
        paragraphs: list[str] = []
        for number, step in enumerate(steps, start=1):
            prompt = write_prompt(q["prompt"], outline, paragraphs, step, self.write_template)
            paragraph = clean_paragraph(await self.call(client, q["id"], number, prompt))
            self.stats["paragraph_steps"] += 1
            if paragraph:
                paragraphs.append(paragraph)
            elif self.a.empty_paragraph == "drop":
                raise Dropped("empty_paragraph", f"step {number} came back empty")
        return paragraphs

    async def work(self, client, q: dict) -> dict:
        """One instruction: outline, filter, write, filter; its data.jsonl row."""
        outline, steps = await self.outline(client, q)
        dropped = outline_drop(steps, outline, self.a.max_steps, self.a.missing_count)
        if dropped is not None:
            raise dropped
        paragraphs = await self.write(client, q, outline, steps)
        dropped = answer_drop(paragraphs, steps, self.a.min_length_ratio)
        if dropped is not None:
            raise dropped
        return answer_row(q["id"], q["prompt"], paragraphs)

    def record(self, q: dict, row: dict) -> None:
        self.data_out.write(row)
        count_written(self.stats)
        self.bar.update(1)
        self.show()

    def record_drop(self, q: dict, err: BaseException) -> None:
        if not isinstance(err, Dropped):  # not a server failure (those are Dropped): a bug, stop
            raise err
        count_drop(self.stats, self.failures, q["id"], err)
        log.log(logging.WARNING if err.reason == "failed_step" else logging.INFO,
                "agentwrite: instruction %s dropped (%s): %s", q["id"], err.reason, str(err)[:300])
        self.bar.update(1)
        self.show()

    def count_already_written(self, instructions: list[dict], written: dict) -> None:
        """Instructions a run before wrote: finished, their outlines' lines without a count counted."""
        for q in instructions:
            if q["id"] in written:
                count_written(self.stats)
                outline = self.cache.get(f"{q['id']}:0")
                if outline:
                    self.stats["outline_lines_without_count"] += sum(
                        s.words is None for s in parse_outline(outline["text"], self.a.plain_lines))


def run(cfg, run_dir: Path, tracker, tokenizer=None) -> dict:
    """task=agentwrite: outline, write paragraph by paragraph, filter; data.jsonl, steps.jsonl, stats.json."""
    from tqdm import tqdm

    from lw import llm

    a, g = cfg.agentwrite, cfg.generation
    templates = (_template(a.outline_prompt, OUTLINE_FIELDS, "outline_prompt"),
                 _template(a.write_prompt, WRITE_FIELDS, "write_prompt"))
    instructions = read_instructions(a.instructions)
    endpoint = llm.Endpoint(g.base_url, g.api_key_env, g.timeout, g.retries, "generation")
    steps_path, data_path, stats_path = agentwrite_files(run_dir)
    steps_path.parent.mkdir(parents=True, exist_ok=True)
    cache, written = read_resumable(steps_path, key="key"), read_resumable(data_path, key="id")
    check_written(written, instructions, data_path, a.instructions)
    todo = [q for q in instructions if q["id"] not in written]
    bar = tqdm(total=len(instructions), initial=len(instructions) - len(todo), desc=f"agentwrite ({g.model})",
               unit="instr")
    with Appender(steps_path) as steps_out, Appender(data_path) as data_out:
        writer = Writer(cfg, endpoint, templates, cache, len(instructions), (steps_out, data_out), bar)
        writer.count_already_written(instructions, written)
        try:
            if todo:
                endpoint.check_reachable()
                llm.run_bounded(todo, writer.work, g.concurrency, writer.record, writer.record_drop)
        finally:
            bar.close()
    return report(writer, stats_path, data_path, tracker)


def report(writer: Writer, stats_path: Path, data_path: Path, tracker) -> dict:
    """stats.json and the metrics; Incomplete when a call failed after its retries."""
    stats, failures = writer.stats, writer.failures
    stats.update({"tokens_in": writer.tokens["in"], "tokens_out": writer.tokens["out"],
                  "estimated_cost": round(writer.cost(), 6)})
    stats_path.write_text(json.dumps({**stats, "drops": failures}, indent=2, ensure_ascii=False) + "\n")
    log.info("agentwrite: %d of %d instructions written (%s); %d calls, %d reused", stats["written"],
             stats["instructions"], ", ".join(f"{k} {v}" for k, v in stats.items() if k.startswith("dropped_") and v)
             or "none dropped", stats["calls"], stats["calls_reused"])
    metrics = {f"agentwrite/{k}": v for k, v in stats.items()}
    tracker.log(metrics)
    if stats["dropped_failed_step"]:
        first = next(f for f in failures if f["reason"] == "failed_step")
        raise Incomplete(f"agentwrite: {stats['dropped_failed_step']} of {stats['instructions']} instructions had "
                         f"a call that failed after its retries (first: {first['id']}: {first['detail'][:300]}); "
                         f"the {stats['written']} written ones are in {data_path}: rerun the same command to ask "
                         f"only for the rest (finished calls are reused)", metrics)
    return metrics


# Only an API model runs: torch is never imported, so a mistyped server URL fails in seconds.
TASK = Task(run=run, summary="outline-then-write long answers with an API model: agentwrite.instructions=FILE "
                             "generation=openai", uses_torch=False, check=check)
