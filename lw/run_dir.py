"""A run directory's layout, named once: every path under RUN_DIR comes from here.

RUN_DIR (runs/<name>/, or multirun/<time>/<name>/ in a sweep) holds
    .hydra/config.yaml      Hydra's composed config (on node R > 0 of a job, .hydra-nodeR/)
    plan.json               dry_run=true's plan
    data/                   the training data as prepared: train.jsonl (SFT messages), pairs.jsonl (DPO),
                            prompts.jsonl (GRPO), tokenized/ (for the distributed workers)
    checkpoints/            the trainer's checkpoints (TRL's args.output_dir); a rerun resumes from the last
                            complete one; torn/ holds those a kill cut short inside their save
    model/                  the trained model, its tokenizer and generation config
    launch/                 what the driver hands its workers (lw/launch/driver.py): config.yaml,
                            deepspeed.json, command.sh, workers.log, ranks/, train_log.jsonl;
                            node R > 0 of a job has its own in launch/nodeR/
    eval/<benchmark>/       predictions.jsonl, judgements.jsonl, length_scatter.png (WritingBench:
                            length_requirements.jsonl, skipped.jsonl)
    pairs/                  task=dpo_pairs: samples.jsonl, judgements.jsonl; beside it pairs.jsonl,
                            pairs_stats.json, pairs_scores.png
    agentwrite/             task=agentwrite: steps.jsonl, data.jsonl, stats.json
    metrics.json            the run's metrics (also its W&B summary)
    results.csv             one row per benchmark item (lw-compare reads these)
    packing_stats.json      a packed SFT set's packs
    train_log.json, reward_curve.png    GRPO's log history and its reward curve
    wandb/                  W&B's files
    lw_incomplete.txt       the mark of a job that ended incomplete (a sweep's summary lists them)
The base stage's cache entry (lw/train/base_stage.py) is laid out as a run directory too (model/,
checkpoints/).
"""

from __future__ import annotations

from pathlib import Path

METRICS = "metrics.json"
RESULTS = "results.csv"
INCOMPLETE_MARK = "lw_incomplete.txt"
HYDRA_CONFIG = ".hydra/config.yaml"


def hydra_config(run_dir) -> Path:
    return Path(run_dir) / HYDRA_CONFIG


def plan_file(run_dir) -> Path:
    return Path(run_dir) / "plan.json"


def metrics_file(run_dir) -> Path:
    return Path(run_dir) / METRICS


def results_file(run_dir) -> Path:
    return Path(run_dir) / RESULTS


def incomplete_mark(run_dir) -> Path:
    return Path(run_dir) / INCOMPLETE_MARK


def wandb_dir(run_dir) -> Path:
    return Path(run_dir) / "wandb"


# ------------------------------------------------------------------------------------- training

def data_dir(run_dir) -> Path:
    return Path(run_dir) / "data"


def train_messages_file(run_dir) -> Path:
    return data_dir(run_dir) / "train.jsonl"


def train_pairs_file(run_dir) -> Path:
    return data_dir(run_dir) / "pairs.jsonl"


def train_prompts_file(run_dir) -> Path:
    return data_dir(run_dir) / "prompts.jsonl"


def packing_stats_file(run_dir) -> Path:
    """The packs' statistics of a packed SFT set."""
    return Path(run_dir) / "packing_stats.json"


def grpo_log_file(run_dir) -> Path:
    """GRPO's log history (TRL's): the reward, each reward's mean, completion lengths per step."""
    return Path(run_dir) / "train_log.json"


def reward_curve_file(run_dir) -> Path:
    return Path(run_dir) / "reward_curve.png"


def tokenized_dir(run_dir) -> Path:
    """The prepared training set node 0's driver saves for every node's workers."""
    return data_dir(run_dir) / "tokenized"


def checkpoint_dir(run_dir) -> Path:
    """Where a run's trainer checkpoints (TRL's args.output_dir) and resumes from."""
    return Path(run_dir) / "checkpoints"


def torn_checkpoints_dir(checkpoints) -> Path:
    """Checkpoints cut short by a kill inside their save, set aside (lw/train/checkpoints.py); outside
    what transformers reads (checkpoint-N folders only)."""
    return Path(checkpoints) / "torn"


def model_dir(run_dir) -> Path:
    """The trained model, saved by lw.train.fit.fit_and_save."""
    return Path(run_dir) / "model"


# --------------------------------------------------------------------------------------- launch

def launch_dir(run_dir, node_rank: int = 0) -> Path:
    """Where a node's driver writes its launch files and its workers read them.

    Every node of a job shares one run directory (docs/engineering.md, "Several nodes"): node 0
    keeps RUN_DIR/launch/, node R > 0 gets RUN_DIR/launch/nodeR/, so no two drivers write one file.
    """
    return Path(run_dir) / "launch" / ("" if node_rank == 0 else f"node{node_rank}")


def launch_config_file(run_dir, node_rank: int = 0) -> Path:
    """The resolved config the workers load (.hydra/config.yaml keeps interpolations only Hydra resolves)."""
    return launch_dir(run_dir, node_rank) / "config.yaml"


def launch_deepspeed_file(run_dir, node_rank: int = 0) -> Path:
    return launch_dir(run_dir, node_rank) / "deepspeed.json"


def launch_command_file(run_dir, node_rank: int = 0) -> Path:
    return launch_dir(run_dir, node_rank) / "command.sh"


def workers_log(run_dir, node_rank: int = 0) -> Path:
    return launch_dir(run_dir, node_rank) / "workers.log"


def ranks_dir(run_dir, node_rank: int = 0) -> Path:
    """torchrun's (or accelerate's) per-rank logs."""
    return launch_dir(run_dir, node_rank) / "ranks"


def train_log(run_dir) -> Path:
    """Rank 0's trainer logs, one JSON line per logging step, for the driver to forward to W&B."""
    return launch_dir(run_dir) / "train_log.jsonl"


# ----------------------------------------------------------------------------------- evaluation

def eval_dir(run_dir, benchmark: str) -> Path:
    return Path(run_dir) / "eval" / benchmark


def predictions_file(bench_dir) -> Path:
    return Path(bench_dir) / "predictions.jsonl"


def judgements_file(bench_dir) -> Path:
    return Path(bench_dir) / "judgements.jsonl"


def length_requirements_file(bench_dir) -> Path:
    """WritingBench's length requirement parsed from each query, beside what was produced."""
    return Path(bench_dir) / "length_requirements.jsonl"


def skipped_file(bench_dir) -> Path:
    """WritingBench's queries left out as longer than the generation backend's context."""
    return Path(bench_dir) / "skipped.jsonl"


def length_scatter_file(bench_dir) -> Path:
    return Path(bench_dir) / "length_scatter.png"


# -------------------------------------------------------------------------- dpo_pairs, agentwrite

def pairs_work_dir(run_dir) -> Path:
    """task=dpo_pairs' samples and judgements (eval_dir's files, without the plot)."""
    return Path(run_dir) / "pairs"


def pairs_file(run_dir) -> Path:
    return Path(run_dir) / "pairs.jsonl"


def pairs_stats_file(run_dir) -> Path:
    return Path(run_dir) / "pairs_stats.json"


def pairs_scores_plot(run_dir) -> Path:
    return Path(run_dir) / "pairs_scores.png"


def samples_file(work_dir) -> Path:
    return Path(work_dir) / "samples.jsonl"


def agentwrite_dir(run_dir) -> Path:
    return Path(run_dir) / "agentwrite"


def agentwrite_files(run_dir) -> tuple[Path, Path, Path]:
    """task=agentwrite's (steps.jsonl, data.jsonl, stats.json)."""
    out = agentwrite_dir(run_dir)
    return out / "steps.jsonl", out / "data.jsonl", out / "stats.json"
