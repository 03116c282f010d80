"""Typed schema of the Hydra config.

Every group's YAML merges into one of these dataclasses, so a misspelt key or a wrong type fails
when the config is composed, before any data or weights are touched. Options that belong to
TRL/transformers (`trainer.args`) are validated by building `SFTConfig`/`DPOConfig` from them.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum
from typing import Any, Dict, List, Optional

from hydra.core.config_store import ConfigStore
from omegaconf import MISSING


class Task(str, Enum):
    train = "train"  # prepare data, train, evaluate the trained model
    prepare = "prepare"  # prepare (and pack) the training set only
    eval = "eval"  # evaluate model.path (checkpoint, hub id or API model) without training
    score = "score"  # score an existing predictions file


@dataclass
class TinyModelConfig:
    """A random-init model built from config on CPU: the same code path as the real models."""

    architecture: str = "llama"  # llama | glm
    hidden_size: int = 64
    num_layers: int = 2
    num_heads: int = 4
    intermediate_size: int = 256
    max_position_embeddings: int = 2048
    tie_word_embeddings: bool = True


@dataclass
class ModelConfig:
    name: str = MISSING  # short name, used in run names
    path: Optional[str] = None  # hub id or local directory; null builds the tiny model
    chat_format: str = MISSING  # llama3_1 | glm4
    dtype: str = "bfloat16"
    trust_remote_code: bool = False
    attn_implementation: Optional[str] = None
    num_parameters: Optional[float] = None  # documented size, for planning
    # GLM-4 needs its seq_length raised for 32k packs (see PAPER.md section 4).
    config_overrides: Dict[str, Any] = field(default_factory=dict)
    tiny: Optional[TinyModelConfig] = None


@dataclass
class ToyDataConfig:
    """Seeded length-controlled writing instructions with answers of exactly the asked length."""

    num_samples: int = 2000
    min_words: int = 10
    max_words: int = 400
    # Requested lengths are round numbers: a tiny model learns "write N words" from round N far
    # better than from uniform N (MINIATURE.md).
    round_lengths: bool = True
    topics: List[str] = field(default_factory=list)


@dataclass
class DataConfig:
    name: str = MISSING
    source: str = "toy"  # toy
    max_output_words: Optional[int] = None  # drop samples whose answer is longer (the paper's cap)
    min_output_words: Optional[int] = None
    max_length: int = 1024  # tokens per sample
    toy: ToyDataConfig = field(default_factory=ToyDataConfig)


@dataclass
class BaseStageConfig:
    """A pretraining stage on documents of every length, trained once and cached, that every
    capped SFT run starts from: the CPU analog of a pretrained base model (MINIATURE.md)."""

    num_documents: int = 40000
    lengths: List[int] = field(default_factory=list)  # the documents' lengths in words
    topics: List[str] = field(default_factory=list)
    seed: int = 0  # fixed across SFT seeds: one base model, as the paper has one GLM-4-9B
    eos_loss_weight: float = 5.0
    args: Dict[str, Any] = field(default_factory=dict)  # passed to trl.SFTConfig
    probe_lengths: List[int] = field(default_factory=list)  # checked after training, in document format


@dataclass
class TrainerConfig:
    name: str = MISSING
    kind: str = "sft"  # sft
    init_from: Optional[str] = None  # start from this checkpoint instead of model.path
    base: Optional[BaseStageConfig] = None  # train (or reuse) a base stage first and start from it
    # Weight of the end-of-sequence token in the loss: a tiny model learns when to stop from it.
    eos_loss_weight: float = 1.0
    args: Dict[str, Any] = field(default_factory=dict)  # passed to trl.SFTConfig


@dataclass
class BenchmarkConfig:
    kind: str = MISSING  # toy_ruler
    lengths: List[int] = field(default_factory=list)
    topics: List[str] = field(default_factory=list)
    samples_per_prompt: int = 1
    data_dir: Optional[str] = None
    limit: Optional[int] = None


@dataclass
class GenerationConfig:
    backend: str = "hf"  # hf
    temperature: float = 0.5
    top_p: float = 1.0
    max_new_tokens: int = 32768
    batch_size: int = 8


@dataclass
class LoggerConfig:
    kind: str = "wandb"  # wandb | none
    project: str = "lw"
    entity: Optional[str] = None
    group: Optional[str] = None  # null: the sweep's name in a multirun, else the run's name
    name: Optional[str] = None  # null: the run's name
    tags: List[str] = field(default_factory=list)
    mode: Optional[str] = None  # null: online with WANDB_API_KEY, else offline


@dataclass
class LauncherConfig:
    kind: str = "local"  # local


@dataclass
class LwConfig:
    task: Task = Task.train
    seed: int = 0
    dry_run: bool = False
    run_name: str = MISSING
    cache_dir: str = MISSING
    model: ModelConfig = MISSING
    data: DataConfig = MISSING
    trainer: TrainerConfig = MISSING
    eval: Dict[str, BenchmarkConfig] = field(default_factory=dict)
    generation: GenerationConfig = field(default_factory=GenerationConfig)
    logger: LoggerConfig = MISSING
    launcher: LauncherConfig = MISSING


def register_configs() -> None:
    ConfigStore.instance().store(name="lw_schema", node=LwConfig)
