"""Typed schema of the Hydra config.

Every group's YAML merges into one of these dataclasses, so a misspelt key or a wrong type fails
when the config is composed, before any data or weights are touched. Options that belong to
TRL/transformers (`trainer.args`) are validated by building `SFTConfig`/`DPOConfig` from them.
"""

from __future__ import annotations

import dataclasses
import typing
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any, Dict, List, Optional

from hydra.core.config_store import ConfigStore
from omegaconf import MISSING, DictConfig, OmegaConf

# Marks on a setting's field, read by `marked_settings`: lw/cli.py derives run names from them.
NAMES_FILE = "names_file"  # its value is a file or folder: it enters run names by its last component
SAME_RESULTS = "same_results"  # it does not change results: left out of run names (and run directories)


def names_file(**kwargs) -> Any:
    """A field whose value names a file or folder (NAMES_FILE)."""
    return field(**kwargs, metadata={NAMES_FILE: True})


def same_results(**kwargs) -> Any:
    """A field that does not change results (SAME_RESULTS)."""
    return field(**kwargs, metadata={SAME_RESULTS: True})


class TinyArchitecture(StrEnum):
    llama = "llama"
    glm = "glm"


class Dtype(StrEnum):
    """`model.dtype`: the weights' dtype when loaded or built."""

    bfloat16 = "bfloat16"
    float16 = "float16"
    float32 = "float32"


@dataclass
class TinyModelConfig:
    """A random-init model built from config on CPU: the same code path as the real models."""

    architecture: TinyArchitecture = TinyArchitecture.llama
    # word: the word-level miniature tokenizer; glm4_chat | llama3_1_instruct: stand-ins for the real chat
    # models' tokenizers, with their special tokens and chat templates (lw/models/tiny.py)
    family: str = "word"
    hidden_size: int = 64
    num_layers: int = 2
    num_heads: int = 4
    intermediate_size: int = 256
    max_position_embeddings: int = 2048
    tie_word_embeddings: bool = True


@dataclass
class SamplingPreset:
    """A model family's official sampling values (docs/science.md, "Evaluating real checkpoints");
    `sampling=official` copies them into `generation`. The defaults are lw's own (`sampling=lw`)."""

    temperature: float = 0.5
    top_p: float = 1.0
    top_k: Optional[int] = None  # null: no top-k cut
    max_new_tokens: int = 32768


@dataclass
class ModelConfig:
    name: str = MISSING  # short name, used in run names
    path: Optional[str] = names_file(default=None)  # hub id or local directory; null builds the tiny model
    # Training formats: glm4 | llama3_1 | plain. Inference only: longwriter_glm4 | longwriter_llama3_1
    # (the official LongWriter inference prompts) | native (the tokenizer's own chat template).
    chat_format: str = MISSING
    # End-of-turn tokens generation stops on, beside the tokenizer's EOS and the ids the checkpoint's
    # generation_config.json lists (lw.models.stops.stop_token_ids).
    stop_tokens: List[str] = field(default_factory=list)
    official_sampling: SamplingPreset = field(default_factory=SamplingPreset)
    dtype: Dtype = Dtype.bfloat16
    trust_remote_code: bool = False
    # auto: with packing on a GPU, one whose cost follows the samples, not the pack (flash_attention_2
    # where flash-attn is installed, else flex_attention); sdpa otherwise. Any other value is kept
    # (sdpa, flex_attention, flash_attention_2, eager); null means auto (lw.models.attention_implementation).
    attn_implementation: Optional[str] = "auto"
    # GLM-4 needs its seq_length raised for 32k packs (docs/science.md section 4).
    config_overrides: Dict[str, Any] = field(default_factory=dict)
    tiny: Optional[TinyModelConfig] = None
    # The hub config's architecture (model_type + transformers config fields), so a dry run or a
    # throughput check can build the model's shapes without downloading anything.
    arch: Dict[str, Any] = field(default_factory=dict)


@dataclass
class ToyDataConfig:
    """Seeded length-controlled writing instructions with answers of exactly the asked length."""

    num_samples: int = 2000
    min_words: int = 10
    max_words: int = 400
    # Requested lengths are round numbers: a tiny model learns "write N words" from round N far
    # better than from uniform N (docs/miniature.md).
    round_lengths: bool = True
    topics: List[str] = field(default_factory=list)


class DataSource(StrEnum):
    toy = "toy"  # the generated toy set (data.toy)
    messages = "messages"  # one messages-format source (data.path or data.hub_id)
    mix = "mix"  # several sources (data.mix), by count or ratio
    pairs = "pairs"  # one preference-pair source (data.path or data.hub_id): prompt, chosen, rejected
    prompts = "prompts"  # writing instructions (data.path): prompt and optional length, for trainer=grpo


class SampleFormat(StrEnum):
    auto = "auto"  # `messages` (role/content) or ShareGPT `conversations` (from/value), per row
    messages = "messages"
    sharegpt = "sharegpt"


class OnBadSample(StrEnum):
    error = "error"  # stop with the file, line and field
    drop = "drop"  # skip it, counted per reason


class Overlong(StrEnum):
    drop = "drop"
    truncate = "truncate"  # keep the first data.max_length tokens (the answer loses its end and EOS)


@dataclass
class MessagesSourceConfig:
    """A messages-format source: a local JSONL/Parquet file, or a dataset on the Hugging Face hub."""

    path: Optional[str] = names_file(default=None)  # local .jsonl or .parquet; read instead of hub_id when both are set
    hub_id: Optional[str] = None  # datasets.load_dataset(hub_id, split=split)
    split: str = "train"
    format: SampleFormat = SampleFormat.auto
    count: Optional[int] = None  # in a mix: this many samples of the source (seeded choice)
    ratio: Optional[float] = None  # in a mix: this share of the mixed set


@dataclass
class DataConfig:
    name: str = MISSING
    source: DataSource = DataSource.toy
    # source=messages
    path: Optional[str] = names_file(default=None)
    hub_id: Optional[str] = None
    split: str = "train"
    format: SampleFormat = SampleFormat.auto
    # source=mix: named sources
    mix: Dict[str, MessagesSourceConfig] = field(default_factory=dict)
    on_bad_sample: OnBadSample = OnBadSample.error
    max_output_words: Optional[int] = None  # drop samples whose answer is longer (the paper's cap)
    min_output_words: Optional[int] = None
    # Tokens per sample; null follows pack_length when packing, else 1024 (lw.data.max_length_of).
    max_length: Optional[int] = None
    overlong: Overlong = Overlong.drop  # what happens to a sample longer than max_length
    # A run that drops more than this share of the samples read as too long for max_length, broken,
    # empty or left without a target stops before training (1: never). Drops asked for by
    # max/min_output_words or the mix do not count.
    max_drop_share: float = 0.01
    pack_length: Optional[int] = None  # pack samples into rows of this many tokens (null: no packing)
    num_proc: int = 1  # processes that tokenize
    toy: ToyDataConfig = field(default_factory=ToyDataConfig)


@dataclass
class BaseStageConfig:
    """A pretraining stage on documents of every length, trained once and cached, that every
    capped SFT run starts from: the CPU analog of a pretrained base model (docs/miniature.md)."""

    num_documents: int = 40000
    lengths: List[int] = field(default_factory=list)  # the documents' lengths in words
    topics: List[str] = field(default_factory=list)
    seed: int = 0  # fixed across SFT seeds: one base model, as the paper has one GLM-4-9B
    eos_loss_weight: float = 5.0
    pack_length: Optional[int] = None  # pack documents into rows of this many tokens (null: padded batches)
    args: Dict[str, Any] = field(default_factory=dict)  # passed to trl.SFTConfig
    probe_lengths: List[int] = field(default_factory=list)  # checked after training, in document format


@dataclass
class TrainerConfig:
    """What every trainer has. Values live in conf/trainer/*.yaml (one default each, there).

    A trainer's own options (SFT's loss weighting, GRPO's rewards) are fields of its module's
    subclass of this (`CONFIG`, lw/train/registry.py); the composed `trainer` node is checked
    against it at start (lw.train.registry.trainer_config), so the node is left open here.
    """

    kind: str = MISSING  # a key of lw.train.registry.TRAINERS
    init_from: Optional[str] = names_file(default=None)  # start from this checkpoint instead of model.path
    base: Optional[BaseStageConfig] = None  # train (or reuse) a base stage first and start from it
    # Passed to the trainer's TRL config (SFTConfig, DPOConfig, ...); a key that config lacks is refused at start.
    args: Dict[str, Any] = field(default_factory=dict)


@dataclass
class BenchmarkConfig:
    kind: str = MISSING  # toy_ruler | longbench_write | longwrite_ruler | writingbench_length
    file: Optional[str] = names_file(default=None)  # null: the kind's official file (longbench_write_en.jsonl is the English half)
    lengths: List[int] = field(default_factory=list)
    topics: List[str] = field(default_factory=list)
    samples_per_prompt: int = 1
    data_dir: Optional[str] = names_file(default=None)
    limit: Optional[int] = None


class GenerationBackend(StrEnum):
    hf = "hf"  # transformers in this process
    vllm = "vllm"  # vLLM in this process
    openai = "openai"  # any OpenAI-compatible server (an API model, or `vllm serve`)


class GenerationServer(StrEnum):
    """generation.server, the kind of server generation=openai talks to."""

    openai = "openai"  # chat completions, the server's chat template (any server)
    # `vllm serve`'s completions on the chat format's token ids of model.path's tokenizer, with each
    # item's seed, top_k and stop_token_ids
    vllm = "vllm"


class Batching(StrEnum):
    # transformers' paged-attention manager: a request starts as soon as the KV cache has room and is
    # saved the step it ends
    continuous = "continuous"
    static = "static"  # batches of batch_size run until their longest answer ends


@dataclass
class GenerationConfig:
    backend: GenerationBackend = GenerationBackend.hf
    temperature: float = 0.5
    top_p: float = 1.0
    top_k: Optional[int] = None  # null: no top-k cut (hf: top_k=0, vllm: -1, openai: not sent)
    max_new_tokens: int = 32768
    # openai: strings the server stops at (sent as `stop` when not empty); hf and vllm stop on token ids
    stop: List[str] = field(default_factory=list)
    batch_size: int = same_results(default=8)  # hf: most requests decoded together (static: per generate() call); vllm: prompts per call
    batching: Batching = Batching.continuous  # hf only
    # hf continuous: the KV cache, in blocks of kv_block_size tokens (null: enough for batch_size of the
    # largest requests), within memory_fraction of the device memory the model leaves free (CPU: of the RAM)
    kv_cache_blocks: Optional[int] = None
    kv_block_size: int = 256
    max_batch_tokens: int = 1024  # hf continuous: tokens per forward step (prompts are prefilled in chunks of it)
    memory_fraction: float = 0.8
    # openai: any OpenAI-compatible server (an API model, or `vllm serve`)
    server: GenerationServer = GenerationServer.openai
    base_url: Optional[str] = None
    model: Optional[str] = None  # the served model's name
    api_key_env: Optional[str] = None  # the NAME of the environment variable holding the key
    concurrency: int = same_results(default=8)
    timeout: float = same_results(default=600.0)  # seconds per request
    retries: int = same_results(default=5)  # on 429, 5xx, timeouts and connection errors, with exponential backoff
    # vllm
    tensor_parallel_size: int = 1
    gpu_memory_utilization: float = 0.9
    max_model_len: Optional[int] = None


class JudgeKind(StrEnum):
    none = "none"  # no judge: S_l only
    openai = "openai"  # LongBench-Write's S_q from any OpenAI-compatible endpoint
    writingbench = "writingbench"  # WritingBench's criteria, 1-10 (eval=writingbench_length)


class ScoreRule(StrEnum):
    integer = "integer"  # every score an integer 1-5 (lw's rule)
    numeric = "numeric"  # anything float() takes (the official judge)


class Extraction(StrEnum):
    lenient = "lenient"  # JSON in fences or amid text, single quotes, broken free text
    official = "official"  # a ```json block, or else the whole reply, newlines removed, through json.loads


@dataclass
class JudgeConfig:
    """The LLM judge of LongBench-Write's quality score S_q (none: S_l only), or WritingBench's criteria judge."""

    kind: JudgeKind = JudgeKind.none
    # A prompt file with $INST$ and $RESPONSE$; null: LongBench-Write's own judge.txt (the paper's).
    template: Optional[str] = names_file(default=None)
    base_url: Optional[str] = None
    model: Optional[str] = None
    temperature: float = 0.5
    top_p: Optional[float] = None  # null: not sent (the server's default)
    max_tokens: Optional[int] = None  # null: the server's limit (the official judge: 1024)
    api_key_env: Optional[str] = None  # the NAME of the environment variable holding the key
    concurrency: int = same_results(default=16)
    timeout: float = same_results(default=120.0)  # seconds per request
    retries: int = same_results(default=5)  # transport retries (429, 5xx, timeouts) with exponential backoff
    attempts: int = 3  # replies sampled at most per judgement until one has valid scores (official: 5)
    scores: ScoreRule = ScoreRule.integer
    extraction: Extraction = Extraction.lenient
    retry_unparseable: bool = True  # a rerun asks again for judgements cached as unparseable
    cache: bool = same_results(default=True)  # reuse judgements by (judge model, prompt, response) from cache_dir/judge
    price_input_per_million: float = same_results(default=0.0)  # USD per million prompt tokens, for the dry run's cost estimate
    price_output_per_million: float = same_results(default=0.0)  # USD per million completion tokens


@dataclass
class ScoreConfig:
    """task=score: score an existing predictions JSONL (prompt, type, length, response) without a model."""

    predictions: Optional[str] = names_file(default=None)
    benchmark: str = "longbench_write"  # an eval entry's name, or a benchmark kind


class PairRule(StrEnum):
    """How a sample's score combines S_l and S_q (task=dpo_pairs)."""

    mean = "mean"  # (S_l + S_q) / 2: LongBench-Write's S, the paper's
    length = "length"  # S_l only (works with judge=none)
    quality = "quality"  # S_q only


@dataclass
class PairsConfig:
    """task=dpo_pairs: DPO preference pairs from model.path's own samples (docs/science.md section 5).

    Sampling settings (temperature, top_p, max_new_tokens, backend) come from `generation`, the
    judge from `judge`, the draw of the rejected answer from `seed`.
    """

    # JSONL of {"prompt", "length" (optional), "id" (optional)}, or of messages/ShareGPT rows whose one
    # user turn is the prompt. null: the prompts of the first `eval` benchmark.
    prompts: Optional[str] = names_file(default=None)
    samples: int = 4  # answers sampled per prompt (the paper: 4); the best is chosen, one other rejected
    # A prompt without a required length (no `length` field, none found in its text) is ranked by S_q.
    rule: PairRule = PairRule.mean
    # A pair whose chosen and rejected scores differ by no more than this is dropped (dropped_margin);
    # a best score shared by two samples goes to the one nearest the required length (rules length and
    # mean); samples still equally good (equally near, or rule quality) are interchangeable: the first is
    # chosen and the rejected drawn from the worse ones; dropped (dropped_tie) only when no sample is
    # worse. A pair separated only by that nearness has no score margin: kept only with min_margin 0.
    min_margin: float = 0.0


class MissingCount(StrEnum):
    """What becomes of an outline with a line without a word count (always counted)."""

    keep = "keep"
    drop = "drop"


class EmptyParagraph(StrEnum):
    """What an empty paragraph does."""

    drop = "drop"  # drops the instruction
    skip = "skip"  # is left out of the answer


@dataclass
class AgentWriteConfig:
    """task=agentwrite: long answers by outline-then-write with an OpenAI-compatible model
    (docs/science.md section 3). The server, model, key, concurrency, timeout and retries come from
    `generation` (generation=openai); the sampling settings of the calls are here."""

    # JSONL of {"prompt": ...} (optional "id"), or messages/ShareGPT rows whose one user turn is the instruction
    instructions: Optional[str] = names_file(default=None)
    outline_prompt: Optional[str] = names_file(default=None)  # a file with $INST$; null: the built-in prompt (English or Chinese)
    # a file with $INST$ $PLAN$ (the outline, named as in the official write.txt) $TEXT$ $STEP$; null: built in
    write_prompt: Optional[str] = names_file(default=None)
    max_steps: int = 50  # an outline with more paragraphs is dropped (dropped_too_many_steps)
    min_length_ratio: float = 0.5  # an answer under this share of its outline's word counts is dropped
    missing_count: MissingCount = MissingCount.keep
    # An outline with neither numbered lines nor counts is taken line by line (else it is unparseable).
    plain_lines: bool = False
    empty_paragraph: EmptyParagraph = EmptyParagraph.drop
    max_tokens: int = 4096  # per call (the paper's GPT-4o settings)
    temperature: float = 1.0
    price_input_per_million: float = same_results(default=0.0)  # USD per million prompt tokens, for the running cost estimate
    price_output_per_million: float = same_results(default=0.0)  # USD per million completion tokens


class LoggerKind(StrEnum):
    wandb = "wandb"
    none = "none"


class OnUnreachable(StrEnum):
    """`logger.on_unreachable`: log offline and `wandb sync` later, or stop before any work (exit 2)."""

    offline = "offline"
    fail = "fail"


@dataclass
class LoggerConfig:
    """Where a run's metrics go; none of it changes results."""

    kind: LoggerKind = same_results(default=LoggerKind.wandb)
    project: str = same_results(default="lw")
    entity: Optional[str] = same_results(default=None)
    group: Optional[str] = same_results(default=None)  # null: the sweep's name in a multirun, else the run's name
    name: Optional[str] = same_results(default=None)  # null: the run's name
    tags: List[str] = same_results(default_factory=list)
    mode: Optional[str] = same_results(default=None)  # null: online with WANDB_API_KEY, else offline
    # seconds wandb.init may wait for the server (W&B's own default: 90)
    init_timeout: float = same_results(default=15.0)
    on_unreachable: OnUnreachable = same_results(default=OnUnreachable.offline)
    # seconds the end of a run may wait for uploads; the rest stays on disk, syncable
    finish_timeout: float = same_results(default=60.0)


class LauncherKind(StrEnum):
    local = "local"
    deepspeed = "deepspeed"
    slurm = "slurm"


class Runner(StrEnum):
    torchrun = "torchrun"
    accelerate = "accelerate"


class Backend(StrEnum):
    nccl = "nccl"
    gloo = "gloo"


@dataclass
class LauncherConfig:
    """Where training runs. local: in the driver's process. deepspeed: the driver starts
    nproc_per_node x nnodes workers (`python -m lw.train.worker RUN_DIR`) under torchrun or
    accelerate. slurm: as deepspeed, with nodes, node rank and master host from the allocation."""

    kind: LauncherKind = same_results(default=LauncherKind.local)
    runner: Runner = same_results(default=Runner.torchrun)
    nproc_per_node: int = 1
    nnodes: int = 1
    node_rank: int = same_results(default=0)
    master_addr: str = same_results(default="127.0.0.1")
    master_port: Optional[int] = same_results(default=None)  # null: a free port (one node only)
    backend: Optional[Backend] = same_results(default=None)  # null: nccl with GPUs, gloo without
    deepspeed: Optional[str] = None  # conf/deepspeed/<name>.json or a path to a DeepSpeed config
    log_tail_lines: int = same_results(default=40)  # lines of a failed rank's log shown in the error
    # Seconds a collective may wait for a peer before the rank fails (gloo's and NCCL's default: 1800):
    # a node lost without closing its connections stops the others within this bound.
    collective_timeout_s: int = same_results(default=600)


@dataclass
class PlanSource:
    """A training source the dry run cannot read locally: its assumed size."""

    name: str = MISSING
    sequences: int = MISSING
    mean_tokens: float = MISSING  # prompt + answer tokens per sequence


class Device(StrEnum):
    cuda = "cuda"
    cpu = "cpu"


@dataclass
class PlanConfig:
    """Assumptions of `dry_run=true` where the data is not local (stated in the plan)."""

    sources: List[PlanSource] = field(default_factory=list)
    packing_efficiency: float = 0.99  # real tokens / pack slots with best-fit-decreasing packing
    gpu_memory_gib: float = 80.0  # per GPU; the plan warns when its estimate exceeds it (H800/H100: 80)
    # The workers' device (cuda | cpu), which picks the attention implementation; null: cuda with
    # launcher=deepspeed or slurm (GPU ranks), this machine's with launcher=local.
    device: Optional[Device] = None
    # An evaluation's plan (task=eval): tokens per counted word (a CJK character or an English word,
    # as lw.words counts them) per tokenizer family (the model's transformers model_type; "judge" for
    # the judge's), and the judge's mean reply length. Rough figures, stated in the plan; measure yours.
    tokens_per_word: Dict[str, Dict[str, float]] = field(default_factory=lambda: {
        "glm": {"en": 1.3, "zh": 0.7}, "llama": {"en": 1.3, "zh": 1.0}, "judge": {"en": 1.3, "zh": 0.7}})
    judge_reply_tokens: int = 600


@dataclass
class LwConfig:
    # A name in lw.tasks.TASKS, checked when the run starts (an unknown one names the valid ones).
    task: str = same_results(default="train")
    seed: int = 0
    dry_run: bool = same_results(default=False)
    run_name: str = MISSING
    cache_dir: str = same_results(default=MISSING)
    model: ModelConfig = MISSING
    data: DataConfig = MISSING
    trainer: TrainerConfig = field(default_factory=TrainerConfig)
    eval: Dict[str, BenchmarkConfig] = field(default_factory=dict)
    generation: GenerationConfig = field(default_factory=GenerationConfig)
    judge: JudgeConfig = field(default_factory=JudgeConfig)
    score: ScoreConfig = field(default_factory=ScoreConfig)
    pairs: PairsConfig = field(default_factory=PairsConfig)
    agentwrite: AgentWriteConfig = field(default_factory=AgentWriteConfig)
    logger: LoggerConfig = same_results(default=MISSING)  # the group's choice (logger=none), and each field
    launcher: LauncherConfig = same_results(default=MISSING)
    plan: PlanConfig = field(default_factory=PlanConfig)


def lw_schema() -> DictConfig:
    """The typed schema the config composes against. The `trainer` node is open: Hydra takes an
    override of any key under it without `+` (trainer.args.KEY, trainer.reward.length, ...), and
    lw.train.registry checks the node against its trainer's own dataclass and TRL config at start."""
    schema = OmegaConf.structured(LwConfig)
    OmegaConf.set_struct(schema.trainer, False)
    return schema


def marked_settings(mark: str, schema: type = None, prefix: str = "") -> list[str]:
    """The dotted keys of the settings whose field carries `mark` (NAMES_FILE, SAME_RESULTS) in the
    typed schema (LwConfig); an entry of a dict node is written <name> (eval.<name>.file)."""
    keys = []
    hints = typing.get_type_hints(schema or LwConfig)
    for f in dataclasses.fields(schema or LwConfig):
        key = prefix + f.name
        if f.metadata.get(mark):
            keys.append(key)
        inner, keyed = _node_class(hints[f.name])
        if inner is not None:
            keys += marked_settings(mark, inner, f"{key}.<name>." if keyed else f"{key}.")
    return keys


def _node_class(hint) -> tuple[type | None, bool]:
    """The dataclass of a field's node (through Optional and Dict values), and whether it is a dict's."""
    if dataclasses.is_dataclass(hint):
        return hint, False
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin is dict:
        return _node_class(args[1])[0], True
    if origin is typing.Union:
        return next((_node_class(a) for a in args if a is not type(None)), (None, False))
    return None, False


def register_configs() -> None:
    ConfigStore.instance().store(name="lw_schema", node=lw_schema())
