"""The real distributed path on CPU, through the entry point: `lw launcher=deepspeed
launcher.nproc_per_node=2 experiment=smoke`, a tiny model on 2 processes, gloo, ZeRO-3 with optimizer
and parameter CPU offload. Rank 1 is SIGKILLed inside the save of the step-6 checkpoint, halfway
through its optimizer shard (fault injection, lw.train.checkpoints.kill_inside_save); the same
command then sets the torn checkpoint-6 aside, resumes from checkpoint-3, here under `accelerate
launch`, to the final step and the unbroken run's final loss, and the driver evaluates and logs.
Two launches in all, nothing compiled."""

import csv
import json
import os
import re
import shutil
from pathlib import Path

import pytest
import torch
from transformers import get_scheduler

from lw.errors import UserError
from lw.tracking import read_offline_run
from lw.train.checkpoints import KILL_POINT_ENV, KILL_STEP_ENV, cut_short, what_is_torn
from lw.train.worker import FAULT_RANK_ENV

from helpers import run_lw

pytestmark = pytest.mark.slow  # every test here launches lw, ranks or a server

OVERRIDES = ["launcher=deepspeed", "launcher.nproc_per_node=2", "experiment=smoke",
             "trainer.args.save_strategy=steps", "+trainer.args.save_steps=3"]


def _train_log(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "launch" / "train_log.jsonl").read_text().splitlines()]


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    cwd = tmp_path_factory.mktemp("deepspeed")
    first = run_lw(*OVERRIDES, cwd=cwd, check=False, env={KILL_POINT_ENV: "optimizer", KILL_STEP_ENV: "6",
                                                          FAULT_RANK_ENV: "1"})
    (run_dir,) = (cwd / "runs").iterdir()
    after_first = {"checkpoints": sorted(p.name for p in (run_dir / "checkpoints").glob("checkpoint-*")),
                   "model": (run_dir / "model").exists(), "train_log": _train_log(run_dir)}
    # launcher.runner stays out of the run name: the same run directory, another launcher.
    second = run_lw(*OVERRIDES, "launcher.runner=accelerate", cwd=cwd, check=False)
    return run_dir, first, after_first, second


def test_a_rank_killed_inside_a_save_fails_the_run_and_leaves_that_checkpoint_torn(runs):
    run_dir, first, after_first, _ = runs
    assert first.returncode != 0
    # Rank 0 fails too once its peer is gone (in DeepSpeed's barrier); torchrun may observe either first.
    assert re.search(r"WorkerFailure: worker rank (1 \(local rank 1\) failed with exit code -9 \(SIGKILL\)|"
                     r"0 \(local rank 0\) failed with exit code 1)", first.stderr), first.stderr[-3000:]
    log = (run_dir / "launch" / "workers.log").read_text()
    assert "[default1]:fault injection: rank 1 killed inside zero_pp_rank_1_mp_rank_00_optim_states.pt of checkpoint-6" in log
    assert after_first["checkpoints"] == ["checkpoint-3", "checkpoint-6"] and after_first["model"] is False
    assert [r["step"] for r in after_first["train_log"] if "loss" in r] == [2, 4, 6]  # step 6 logged before its save
    torn = run_dir / "checkpoints" / "torn" / "checkpoint-6"  # where the rerun set it aside, as the kill left it
    assert cut_short(torn / "global_step6" / "zero_pp_rank_1_mp_rank_00_optim_states.pt")
    assert not (torn / "trainer_state.json").exists() and not (torn / "latest").exists()


def test_rerun_resumes_from_the_last_checkpoint_to_the_final_step(runs):
    run_dir, _, after_first, second = runs
    assert second.returncode == 0, second.stderr[-4000:]
    output = second.stdout + second.stderr
    checkpoints = run_dir / "checkpoints"
    (line,) = [line for line in output.splitlines() if " is incomplete (" in line]
    assert f"checkpoint {checkpoints / 'checkpoint-6'} is incomplete (trainer_state.json" in line
    assert line.endswith(f"moved aside to {checkpoints / 'torn' / 'checkpoint-6'}; resuming from "
                         f"{checkpoints / 'checkpoint-3'}")
    assert f"resuming from {checkpoints / 'checkpoint-3'}" in output
    state = json.loads((run_dir / "checkpoints" / "checkpoint-6" / "trainer_state.json").read_text())
    assert state["global_step"] == state["max_steps"] == 6
    assert [r["step"] for r in state["log_history"] if "loss" in r] == [2, 4, 6]
    resumed = _train_log(run_dir)[len(after_first["train_log"]):]
    assert [r["step"] for r in resumed if "loss" in r] == [4, 6]  # started after step 3, not from 0
    # The killed run trained and logged step 6 before its save: the unbroken run's final loss.
    unbroken, final = (next(r["loss"] for r in logs if r.get("step") == 6 and "loss" in r)
                       for logs in (after_first["train_log"], resumed))
    print(f"2-rank ZeRO-3 final loss: unbroken {unbroken!r}, after the kill inside the save {final!r}")
    assert final == pytest.approx(unbroken, rel=1e-4)
    # The learning-rate schedule went on where it stopped (its state came from the checkpoint).
    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=3e-3)
    schedule = get_scheduler("cosine", optimizer, num_warmup_steps=20, num_training_steps=6).lr_lambdas[0]
    for record in after_first["train_log"] + resumed:
        if "learning_rate" in record:
            assert record["learning_rate"] == pytest.approx(3e-3 * schedule(record["step"] - 1))
    assert (run_dir / "model" / "model.safetensors").exists() and (run_dir / "model" / "tokenizer.json").exists()


def test_training_was_zero3_on_two_gloo_ranks_with_nothing_compiled(runs):
    run_dir, _, _, second = runs
    log = (run_dir / "launch" / "workers.log").read_text()
    assert log.count("ZeRO stage 3, world size 2") == 2  # both attempts
    shards = sorted(p.name for p in (run_dir / "checkpoints" / "checkpoint-6" / "global_step6").iterdir())
    assert shards == [f"zero_pp_rank_{r}_mp_rank_00_{k}_states.pt" for r in (0, 1) for k in ("model", "optim")]
    config = json.loads((run_dir / "launch" / "deepspeed.json").read_text())
    assert config["zero_optimization"]["offload_param"]["device"] == "cpu"
    assert "accelerate.commands.launch" in (run_dir / "launch" / "command.sh").read_text()
    assert "Building extension" not in log and "built successfully" not in log
    extensions = Path(os.environ.get("TORCH_EXTENSIONS_DIR", Path(os.environ["LW_CACHE"]) / "torch_extensions"))
    assert not extensions.exists() or not any(extensions.iterdir())


def test_the_driver_evaluates_and_holds_the_only_wandb_run(runs):
    run_dir, _, _, second = runs
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["ruler/n"] == 4 and 0 <= metrics["ruler/S_l"] <= 100
    assert len(list(csv.DictReader((run_dir / "results.csv").open()))) == 4
    offline = sorted((run_dir / "wandb").glob("offline-run-*"))
    assert len(offline) == 2  # the failed attempt's run and this one; none from the workers
    failed, resumed = (read_offline_run(p) for p in offline)
    assert [h["train/global_step"] for h in failed["history"] if "train/loss" in h] == [2, 4, 6]
    logged = [h for h in resumed["history"] if "train/loss" in h]
    assert [h["train/global_step"] for h in logged] == [4, 6]
    assert logged[-1]["train/loss"] == pytest.approx(_train_log(run_dir)[-2]["loss"])
    assert resumed["summary"]["ruler/S_l"] == pytest.approx(metrics["ruler/S_l"])
    # The training set's figures are in metrics.json too, as in a local run, and agree with W&B.
    data = {k: v for k, v in metrics.items() if k.startswith("data/")}
    assert {"data/packs", "data/sequences_packed"} <= set(data)
    assert data == {k: v for k, v in resumed["summary"].items() if k.startswith("data/")}
    assert resumed["config"]["launcher"]["runner"] == "accelerate"
    assert not list(run_dir.glob("checkpoints/**/wandb"))


@pytest.fixture
def complete(runs, tmp_path) -> Path:
    """A copy of the run's complete 2-rank ZeRO-3 checkpoint-3, to carve what a kill leaves."""
    shutil.copytree(runs[0] / "checkpoints" / "checkpoint-3", tmp_path / "checkpoint-3")
    return tmp_path / "checkpoint-3"


@pytest.mark.parametrize("carve, expected", [
    # Each rank writes its RNG state after DeepSpeed's closing barrier, rank 0 then the trainer state.
    (lambda c: (c / "rng_state_1.pth").unlink(), ["rng_state_1.pth missing"]),
    (lambda c: (c / "latest").unlink(), ["latest missing"]),
    (lambda c: (c / "global_step3" / "zero_pp_rank_1_mp_rank_00_optim_states.pt").write_bytes(b"PK\x03\x04"),
     ["global_step3/zero_pp_rank_1_mp_rank_00_optim_states.pt cut short"]),
    (lambda c: (c / "global_step3" / "zero_pp_rank_0_mp_rank_00_model_states.pt").unlink(),
     ["global_step3/zero_pp_rank_0_mp_rank_00_model_states.pt missing"]),
], ids=["rng-of-rank-1", "latest", "optimizer-shard-cut-short", "model-shard"])
def test_what_a_kill_leaves_in_a_zero3_checkpoint_is_torn(complete, carve, expected):
    assert what_is_torn(complete, 2, True) == []
    carve(complete)
    assert what_is_torn(complete, 2, True) == expected


def test_a_zero3_checkpoint_of_two_ranks_is_not_resumed_by_another_number(complete):
    for world_size in (1, 4):
        with pytest.raises(UserError, match=f"holds the files of 2 rank\\(s\\), this run has {world_size}"):
            what_is_torn(complete, world_size, True)
