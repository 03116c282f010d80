"""Trainer kinds and the module that trains each: the one place that knows which trainers exist.

The pipeline, the distributed worker and the dry-run planner ask this registry for the trainer
of `trainer.kind` and call only what every trainer module provides:

    training_args(cfg, checkpoint_dir, report_to) -> transformers.TrainingArguments
        its TRL config, built from `trainer.args`; a bad option fails here, at start
    build_dataset(cfg, tokenizer, run_dir) -> (datasets.Dataset, stats)
        the training set, and flat statistics about it (logged as data/<key>)
    train(cfg, model, tokenizer, dataset, run_dir, report_to, callbacks=None) -> Path
        train (resuming from run_dir/checkpoints) and save the final model into run_dir/model

and, optionally, `CONFIG` (a subclass of lw.config.TrainerConfig with the trainer's own options),
`DATA_SOURCES` (the data.source values it trains on, with `DATA_HINT`: what to set instead; checked
at start by check_data_source) and `plan(cfg, args, counts, nnodes, hf_config) -> TrainerPlan`
(lw/plan/trainer_plan.py: what it adds to a dry run).

Adding a trainer: a module in lw/train/ with these functions, a `conf/trainer/<name>.yaml` and one
line in TRAINERS (docs/architecture.md, "Adding a trainer").
"""

from __future__ import annotations

import dataclasses
import difflib
import importlib
from pathlib import Path
from typing import Protocol

from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import ConfigKeyError, OmegaConfBaseException

from lw.config import TrainerConfig
from lw.errors import UserError

TRAINERS: dict[str, str] = {
    "sft": "lw.train.sft",  # supervised fine-tuning (TRL SFTTrainer)
    "dpo": "lw.train.dpo",  # direct preference optimisation with an SFT term (TRL DPOTrainer)
    "grpo": "lw.train.grpo",  # reinforcement learning on rewards such as S_l (TRL GRPOTrainer)
}

# TRL options lw sets from its own settings: each names the setting to change instead.
SET_BY_LW = {
    "output_dir": "hydra.run.dir (checkpoints go to RUN_DIR/checkpoints)",
    "seed": "seed",
    "data_seed": "seed",
    "report_to": "logger.kind",
    "run_name": "run_name",
}


class Trainer(Protocol):
    def training_args(self, cfg, checkpoint_dir: Path, report_to: str): ...

    def build_dataset(self, cfg, tokenizer, run_dir: Path): ...

    def train(self, cfg, model, tokenizer, dataset, run_dir: Path, report_to: str, callbacks=None) -> Path: ...


def closest(name: str, choices, otherwise: str) -> str:
    """`; did you mean X?` for the choices nearest a misspelt name, else `otherwise`."""
    near = difflib.get_close_matches(name, list(choices), n=3)
    return f"; did you mean {' or '.join(near)}?" if near else otherwise


def trainer_for(cfg) -> Trainer:
    """The trainer module of `cfg.trainer.kind` (imported on first use: each pulls in its TRL trainer)."""
    kind = str(cfg.trainer.kind)
    if kind not in TRAINERS:
        raise UserError(f"trainer.kind={kind} is not a trainer: the trainers are {', '.join(TRAINERS)}"
                        + closest(kind, TRAINERS, ""))
    return importlib.import_module(TRAINERS[kind])  # type: ignore[return-value]


def check_data_source(cfg) -> None:
    """data.source against the sources the trainer declares (DATA_SOURCES; none declared: any), at
    start, so `trainer=dpo data=toy` fails before the data is read."""
    module = trainer_for(cfg)
    accepted = getattr(module, "DATA_SOURCES", None)
    source = cfg.data.source
    if accepted is not None and source not in accepted:
        raise UserError(f"trainer={cfg.trainer.kind} trains on data.source {' or '.join(accepted)}, not "
                        f"{source}: {module.DATA_HINT}")


def trainer_config(cfg) -> DictConfig:
    """The `trainer` node checked against its trainer's dataclass (its module's CONFIG, else
    TrainerConfig): a key it does not declare or a value of the wrong type fails here, in one line."""
    schema = getattr(trainer_for(cfg), "CONFIG", TrainerConfig)
    given = OmegaConf.to_container(cfg.trainer, resolve=True)
    options = [f.name for f in dataclasses.fields(schema)]
    unknown = sorted(set(given) - set(options))
    if unknown:
        raise UserError(f"trainer.{unknown[0]} is not an option of trainer={cfg.trainer.kind}"
                        + closest(unknown[0], options, f"; its options: {', '.join(options)}"))
    try:
        return OmegaConf.merge(OmegaConf.structured(schema), given)
    except ConfigKeyError as e:  # a key a nested option (trainer.reward, trainer.base) lacks
        fields = [f.name for f in dataclasses.fields(e.object_type)] if dataclasses.is_dataclass(e.object_type) else []
        raise UserError(f"trainer.{e.full_key} is not an option of trainer={cfg.trainer.kind}"
                        + closest(str(e.key), fields, f"; the options there: {', '.join(fields)}")) from None
    except OmegaConfBaseException as e:
        raise UserError(f"trainer.{e.full_key}: {e.msg.splitlines()[0]}") from None


def trl_args(cfg, config_class, args: dict | None = None, where: str = "trainer.args",
             set_by_lw: dict[str, str] | None = None) -> dict:
    """`trainer.args` (or `args`) as a dict, every key an option of `config_class` (a TRL config)
    that lw does not set itself; a key that is not refuses the run, named."""
    args = dict(OmegaConf.to_container(cfg.trainer.args, resolve=True) if args is None else args)
    valid = {f.name for f in dataclasses.fields(config_class) if f.init}
    owned = {**SET_BY_LW, **(set_by_lw or {})}
    for key in args:
        if key in owned:
            raise UserError(f"{where}.{key}: lw sets it; set {owned[key]} instead")
        if key not in valid:
            raise UserError(f"{where}.{key} is not an option of trl.{config_class.__name__}"
                            + closest(key, valid, f" (see trl.{config_class.__name__}'s fields)"))
    return args
