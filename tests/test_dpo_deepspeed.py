"""trainer=dpo through the entry point: locally, and on 2 real processes under DeepSpeed ZeRO-3 with
CPU offload (gloo), where rank 1 dies after the step-2 checkpoint and the same command resumes."""

import json
import os

import pytest

from lw.models import build_model
from lw.models.tiny import tiny_tokenizer
from lw.tracking import read_offline_run
from lw.train.worker import FAULT_RANK_ENV, FAULT_STEP_ENV

from helpers import compose_lw, run_lw
from test_dpo import toy_preferences, write_pairs

pytestmark = pytest.mark.slow  # every test here launches lw, ranks or a server


@pytest.fixture(scope="module")
def start(tmp_path_factory):
    """A saved tiny model (the "SFT" checkpoint DPO starts from) and a toy preference set."""
    root = tmp_path_factory.mktemp("dpo")
    tokenizer = tiny_tokenizer(os.environ["LW_CACHE"])
    model_dir = root / "sft_model"
    build_model(compose_lw().model, tokenizer, seed=0).save_pretrained(model_dir)
    tokenizer.save_pretrained(model_dir)
    return root, model_dir, write_pairs(root / "pairs.jsonl", toy_preferences(32, seed=1))


def dpo_overrides(model_dir, pairs):
    return ["experiment=smoke", "trainer=dpo", "data=pairs", f"data.path={pairs}", f"trainer.init_from={model_dir}",
            "trainer.args.max_steps=4", "trainer.args.per_device_train_batch_size=2", "trainer.args.logging_steps=1"]


def test_dpo_runs_through_lw_and_logs_its_reward_metrics(start):
    """Locally, with a reference model loaded from the starting checkpoint (the distributed run
    below precomputes the reference instead)."""
    root, model_dir, pairs = start
    cwd = root / "local"
    cwd.mkdir()
    result = run_lw(*dpo_overrides(model_dir, pairs), "trainer.args.precompute_ref_log_probs=false", cwd=cwd)
    assert "Computing reference log probs" not in result.stdout + result.stderr
    (run_dir,) = (cwd / "runs").iterdir()
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["data/pairs"] == 32 and metrics["ruler/n"] == 4
    logged = read_offline_run(next((run_dir / "wandb").glob("offline-run-*")))
    steps = [h for h in logged["history"] if "train/rewards/margins" in h]
    assert len(steps) == 4
    assert {"train/rewards/chosen", "train/rewards/rejected", "train/rewards/accuracies"} <= set(steps[-1])
    assert logged["config"]["trainer"]["kind"] == "dpo"
    assert logged["config"]["trainer"]["args"]["loss_type"] == ["sigmoid", "sft"]


@pytest.fixture(scope="module")
def distributed(start):
    root, model_dir, pairs = start
    cwd = root / "deepspeed"
    cwd.mkdir()
    overrides = [*dpo_overrides(model_dir, pairs), "launcher=deepspeed", "launcher.nproc_per_node=2",
                 "trainer.args.save_strategy=steps", "+trainer.args.save_steps=2"]
    first = run_lw(*overrides, cwd=cwd, check=False, env={FAULT_STEP_ENV: "2", FAULT_RANK_ENV: "1"})
    (run_dir,) = (cwd / "runs").iterdir()
    checkpoints = sorted(p.name for p in (run_dir / "checkpoints").glob("checkpoint-*"))
    second = run_lw(*overrides, cwd=cwd, check=False)
    return run_dir, first, checkpoints, second


def test_dpo_on_two_zero3_ranks_resumes_after_a_rank_dies(distributed):
    run_dir, first, checkpoints, second = distributed
    assert first.returncode != 0 and "fault injection: rank 1 exits after checkpoint 2" in first.stderr
    assert checkpoints == ["checkpoint-2"]
    assert second.returncode == 0, second.stderr[-4000:]
    assert f"resuming from {run_dir / 'checkpoints' / 'checkpoint-2'}" in second.stdout + second.stderr
    log = (run_dir / "launch" / "workers.log").read_text()
    assert log.count("ZeRO stage 3, world size 2") == 2
    assert "Computing reference log probs" in log  # precomputed on the sharded model, no second copy
    state = json.loads((run_dir / "checkpoints" / "checkpoint-4" / "trainer_state.json").read_text())
    assert state["global_step"] == 4
    resumed = [json.loads(line) for line in (run_dir / "launch" / "train_log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in resumed if "rewards/margins" in r] == [1, 2, 3, 4]  # 1-2 before, 3-4 after
    assert (run_dir / "model" / "model.safetensors").exists()
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["data/pairs"] == 32 and metrics["ruler/n"] == 4
