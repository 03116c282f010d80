"""lw's OpenAI-compatible client against a server that no one here wrote: `transformers serve` on
loopback, serving a tiny model saved the way lw saves every trained model (its chat template is
the format it was trained in)."""

import json

import pytest

from lw.models import build_model
from lw.models.chat_format import get_chat_format
from lw.models.tiny import tiny_tokenizer
from lw.testing.hf_serve import transformers_serve

from helpers import compose_lw, run_lw

pytestmark = pytest.mark.slow  # every test here launches lw, ranks or a server


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    import os

    root = tmp_path_factory.mktemp("served")
    model_dir = root / "model"
    tokenizer = tiny_tokenizer(os.environ["LW_CACHE"])
    tokenizer.chat_template = get_chat_format("llama3_1").jinja
    model = build_model(compose_lw().model, tokenizer, seed=0)
    # A random model's favourite tokens are special ones (which decode to nothing) or numbers: let it
    # say only words (or stop), so that its plans and paragraphs are text.
    model.generation_config.bad_words_ids = [[i] for token, i in tokenizer.get_vocab().items()
                                             if not token.isalpha() and i != tokenizer.eos_token_id]
    model.save_pretrained(model_dir)
    tokenizer.save_pretrained(model_dir)
    with transformers_serve(model_dir, log_path=root / "serve.log") as base_url:
        yield root, model_dir, base_url


def test_eval_through_generation_openai_against_transformers_serve(served):
    root, model_dir, base_url = served
    run_dir = root / "eval"
    run_lw("task=eval", "generation=openai", f"generation.base_url={base_url}", f"generation.model={model_dir}",
           "generation.api_key_env=null", "generation.max_new_tokens=16", "eval.toy_ruler.lengths=[12,25]",
           "eval.toy_ruler.topics=[rivers]", "eval.toy_ruler.samples_per_prompt=1", "logger=none",
           f"hydra.run.dir={run_dir}", cwd=root)
    rows = [json.loads(line) for line in (run_dir / "eval" / "toy_ruler" / "predictions.jsonl").open()]
    assert sorted(r["length"] for r in rows) == [12, 25]
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["ruler/n"] == 2
    log = (root / "serve.log").read_text()
    assert log.count('"POST /v1/chat/completions HTTP/1.1" 200') == 2  # the server answered both


def test_agentwrite_against_transformers_serve(served):
    """The whole task against the real server: plan and paragraph calls answered, every call's
    usage recorded, data.jsonl in the messages format. A random tiny model writes plans as plain
    words without counts: read line by line (agentwrite.plain_lines) and kept (missing_count=keep)."""
    root, model_dir, base_url = served
    instructions = root / "instructions.jsonl"
    instructions.write_text("".join(json.dumps({"prompt": f"Write a 300-word note about {t}."}) + "\n"
                                    for t in ("rivers", "trains")))
    run_dir = root / "agentwrite"
    run_lw("task=agentwrite", f"agentwrite.instructions={instructions}", "agentwrite.missing_count=keep",
           "agentwrite.min_length_ratio=0", "agentwrite.plain_lines=true", "agentwrite.max_tokens=24", "generation=openai",
           f"generation.base_url={base_url}", f"generation.model={model_dir}", "generation.api_key_env=null",
           "logger=none", f"hydra.run.dir={run_dir}", cwd=root)
    steps = [json.loads(line) for line in (run_dir / "agentwrite" / "steps.jsonl").open()]
    stats = json.loads((run_dir / "agentwrite" / "stats.json").read_text())
    assert {s["instruction_id"] for s in steps} == {"0", "1"} and {0, 1} <= {s["step"] for s in steps}
    assert all(s["usage"]["completion_tokens"] > 0 for s in steps)  # the server's own token counts
    assert stats["instructions"] == 2 and stats["tokens_out"] == sum(s["usage"]["completion_tokens"] for s in steps)
    for row in map(json.loads, (run_dir / "agentwrite" / "data.jsonl").open()):
        assert [m["role"] for m in row["messages"]] == ["user", "assistant"]


def test_writingbench_judge_against_transformers_serve(served, tmp_path):
    """WritingBench's criteria judge (system turn, top_p, max_tokens) answered by a real server. A
    random model writes no JSON: each reply is read, found unparseable and asked again, never scored."""
    from omegaconf import OmegaConf

    from lw.config import BenchmarkConfig, JudgeConfig
    from lw.eval.benchmarks import load_items
    from lw.eval.writingbench import judge_prompts
    from lw.eval.writingbench_judge import CriteriaJudge, criterion_rows
    from lw.testing.benchmark_files import write_writingbench_files

    root, model_dir, base_url = served
    bench = OmegaConf.structured(BenchmarkConfig(kind="writingbench_length",
                                                 data_dir=str(write_writingbench_files(tmp_path / "wb"))))
    rows = criterion_rows([{**load_items(bench, str(tmp_path))[0], "response": "A short note on parks."}])[:1]
    cfg = OmegaConf.structured(JudgeConfig(kind="writingbench", base_url=base_url, model=str(model_dir),
                                           temperature=1.0, top_p=0.95, max_tokens=8, attempts=2, concurrency=1))
    answered = (root / "serve.log").read_text().count('"POST /v1/chat/completions HTTP/1.1" 200')
    (judgement,) = CriteriaJudge(cfg, judge_prompts(bench, str(tmp_path)), tmp_path / "judge.jsonl").judge(rows)
    assert judgement["status"] == "unparseable" and judgement["score"] is None and judgement["attempts"] == 2
    assert isinstance(judgement["reply"], str) and "not JSON" in judgement["error"]
    assert (root / "serve.log").read_text().count('"POST /v1/chat/completions HTTP/1.1" 200') == answered + 2
