"""lw's OpenAI-compatible client against a server that no one here wrote: `transformers serve` on
loopback, serving a tiny model saved the way lw saves every trained model (its chat template is
the format it was trained in)."""

import json

import pytest

from lw.models import build_model
from lw.models.chat_format import get_chat_format
from lw.models.tiny import tiny_tokenizer
from lw.testing.hf_serve import transformers_serve

from conftest import compose_lw, run_lw


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    import os

    root = tmp_path_factory.mktemp("served")
    model_dir = root / "model"
    tokenizer = tiny_tokenizer(os.environ["LW_CACHE"])
    tokenizer.chat_template = get_chat_format("llama3_1").jinja
    build_model(compose_lw().model, tokenizer, seed=0).save_pretrained(model_dir)
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
