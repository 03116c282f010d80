"""Every config composes against the typed schema; bad overrides fail at start, clearly."""

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from hydra.errors import ConfigCompositionException
from omegaconf import OmegaConf

from lw.cli import CONFIG_DIR, run_name
from lw.config import TrainerConfig
from lw.data.settings import DEFAULT_MAX_LENGTH, max_length_of
from lw.errors import UserError
from lw.train.registry import TRAINERS, trainer_config, trainer_for

from helpers import compose_lw, run_lw


def group_options(group: str) -> list[str]:
    return sorted(p.stem for p in (Path(CONFIG_DIR) / group).glob("*.yaml"))


GROUPS = ["model", "data", "trainer", "eval", "generation", "judge", "logger", "launcher"]


@pytest.mark.parametrize("group, option", [(g, o) for g in GROUPS for o in group_options(g)])
def test_every_group_option_composes(group, option):
    cfg = compose_lw(f"{group}={option}")
    assert cfg.task == "train"
    OmegaConf.to_container(cfg.model, resolve=True)  # no dangling interpolation


@pytest.mark.parametrize("experiment", group_options("experiment"))
def test_every_experiment_composes(experiment):
    cfg = compose_lw(f"experiment={experiment}")
    trainer_for(cfg).training_args(cfg, Path("unused"), "none")


def test_default_trainer_args_are_valid_sft_config():
    from trl import SFTConfig

    cfg = compose_lw()
    args = trainer_for(cfg).training_args(cfg, Path("unused"), "none")
    assert isinstance(args, SFTConfig)
    # data=toy leaves data.max_length null and does not pack: the documented default
    assert args.completion_only_loss and args.max_length == max_length_of(cfg.data) == DEFAULT_MAX_LENGTH


def test_every_task_has_one_module_declaring_its_task():
    from lw.tasks import TASKS, Task, task_of

    assert len(set(TASKS.values())) == len(TASKS)
    for name in TASKS:
        task = task_of(name)
        assert isinstance(task, Task) and callable(task.run) and task.summary, f"{TASKS[name]} lacks TASK"
    # The hooks a task declares are what the pipeline runs: train's base stage before W&B, its dry run.
    assert task_of("train").before_tracking is not None and task_of("score").dry_run is None
    assert not task_of("agentwrite").uses_torch and task_of("prepare").needs_tokenizer


def test_an_unknown_task_names_the_closest_and_the_valid_ones():
    from lw.errors import UserError
    from lw.tasks import task_of

    with pytest.raises(UserError, match="task=trian is not a task; did you mean task=train"):
        task_of("trian")
    with pytest.raises(UserError, match="valid tasks: train, prepare, eval, score, dpo_pairs, agentwrite"):
        task_of("zzz")


def test_a_task_module_without_its_declaration_is_a_bug_named(monkeypatch):
    from lw.tasks import TASKS, task_of

    monkeypatch.setitem(TASKS, "bare", "lw.words")  # a module, but no TASK in it
    with pytest.raises(TypeError, match="lw.words declares no TASK"):
        task_of("bare")


@pytest.mark.parametrize("setting, choices", [
    ("judge.kind", "none, openai, writingbench"), ("judge.scores", "integer, numeric"), ("judge.extraction", "lenient, official"),
    ("pairs.rule", "mean, length, quality"), ("agentwrite.missing_count", "keep, drop"),
    ("agentwrite.empty_paragraph", "drop, skip"), ("generation.backend", "hf, vllm, openai"),
    ("generation.batching", "continuous, static"), ("generation.server", "openai, vllm"), ("logger.kind", "wandb, none"),
    ("logger.on_unreachable", "offline, fail"),
    ("launcher.kind", "local, deepspeed, slurm"), ("launcher.runner", "torchrun, accelerate"),
    ("launcher.backend", "nccl, gloo"), ("plan.device", "cuda, cpu"), ("model.dtype", "bfloat16, float16, float32"),
    ("model.tiny.architecture", "llama, glm"), ("data.source", "toy, messages, mix, pairs, prompts"),
])
def test_a_closed_choice_fails_at_compose_listing_its_choices(setting, choices):
    with pytest.raises(ConfigCompositionException) as err:
        compose_lw(f"{setting}=nope")
    assert f"Invalid value 'nope', expected one of [{choices}]" in str(err.value.__cause__)


@pytest.mark.parametrize("kind", list(TRAINERS))
def test_every_trainer_kind_has_a_module_with_the_trainer_functions(kind):
    module = trainer_for(OmegaConf.create({"trainer": {"kind": kind}}))
    assert module.__name__ == TRAINERS[kind]
    for name in ("training_args", "build_dataset", "train"):
        assert callable(getattr(module, name)), f"{module.__name__} lacks {name}"


@pytest.mark.parametrize("option", group_options("trainer"))
def test_trainer_yaml_holds_every_option_a_researcher_sets(option):
    """A trainer option's file names each of its settings (one default, in the YAML)."""
    raw = OmegaConf.load(Path(CONFIG_DIR) / "trainer" / f"{option}.yaml")
    assert raw.kind in TRAINERS
    schema = getattr(trainer_for(OmegaConf.create({"trainer": raw})), "CONFIG", TrainerConfig)
    required = [name for name in schema.__dataclass_fields__ if name != "args"]
    assert sorted(set(required) - set(raw)) == [], f"trainer/{option}.yaml lacks these settings"


def test_an_unknown_trainer_kind_fails_at_start_naming_the_trainers():
    cfg = compose_lw("trainer.kind=sfx")
    with pytest.raises(UserError, match="trainer.kind=sfx is not a trainer: the trainers are sft, dpo, grpo; "
                                        "did you mean sft"):
        trainer_for(cfg)


@pytest.mark.parametrize("trainer, data, message", [
    ("sft", "pairs", "trainer=sft trains on data.source toy or messages or mix, not pairs: give it conversations"),
    ("dpo", "toy", "trainer=dpo trains on data.source pairs or mix, not toy: set data=pairs data.path=FILE"),
    ("grpo", "pairs", "trainer=grpo trains on data.source toy or prompts or messages or mix, not pairs: it samples"),
])
def test_a_data_source_the_trainer_does_not_train_on_fails_at_start(trainer, data, message):
    from lw.train.registry import check_data_source

    with pytest.raises(UserError, match=message):
        check_data_source(compose_lw(f"trainer={trainer}", f"data={data}", "trainer.init_from=x"))
    accepted = {"sft": "toy", "dpo": "pairs", "grpo": "prompts"}[trainer]
    check_data_source(compose_lw(f"trainer={trainer}", f"data={accepted}", "trainer.init_from=x"))


def test_a_trainers_own_options_are_set_without_plus_and_checked_against_its_dataclass():
    cfg = compose_lw("trainer.eos_loss_weight=3", "trainer.loss_weighting=pack_mean")
    assert cfg.trainer.eos_loss_weight == 3  # in the composed config, so in .hydra/config.yaml and W&B
    options = trainer_config(cfg)
    assert options.eos_loss_weight == 3.0 and options.loss_weighting.value == "pack_mean"
    with pytest.raises(UserError, match="trainer.eos_los_weight is not an option of trainer=sft; did you mean "
                                        "eos_loss_weight"):
        trainer_config(compose_lw("trainer.eos_los_weight=3"))
    with pytest.raises(UserError, match="trainer.loss_weighting: Invalid value 'nope'"):
        trainer_config(compose_lw("trainer.loss_weighting=nope"))
    # SFT's loss options are SFT's alone; GRPO's rewards live under its trainer node.
    with pytest.raises(UserError, match="trainer.eos_loss_weight is not an option of trainer=dpo"):
        trainer_config(compose_lw("trainer=dpo", "trainer.eos_loss_weight=1"))
    grpo = compose_lw("trainer=grpo", "trainer.reward.length=0.5", "trainer.reward.quality=0.25")
    assert grpo.trainer.reward.length == 0.5 and trainer_config(grpo).reward.quality == 0.25
    with pytest.raises(UserError, match="trainer.reward.lenght is not an option of trainer=grpo; did you mean length"):
        trainer_config(compose_lw("trainer=grpo", "trainer.reward.lenght=0.5"))
    with pytest.raises(ConfigCompositionException, match="reward"):
        compose_lw("reward.length=1")  # the old root node is gone


def test_a_known_trl_key_needs_no_plus_and_an_unknown_one_is_refused_with_the_close_keys():
    cfg = compose_lw("trainer.args.adam_epsilon=1e-6")  # not in conf/trainer/sft.yaml: no `+` needed
    assert trainer_for(cfg).training_args(cfg, Path("unused"), "none").adam_epsilon == 1e-6
    with pytest.raises(UserError, match="trainer.args.learning_rat is not an option of trl.SFTConfig; "
                                        "did you mean learning_rate"):
        cfg = compose_lw("trainer.args.learning_rat=1")
        trainer_for(cfg).training_args(cfg, Path("unused"), "none")
    cfg = compose_lw("trainer=dpo", "trainer.init_from=x", "trainer.args.bta=0.5")
    with pytest.raises(UserError, match="trl.DPOConfig; did you mean beta"):
        trainer_for(cfg).training_args(cfg, Path("unused"), "none")


@pytest.mark.parametrize("key, setting", [("seed", "set seed instead"), ("output_dir", "set hydra.run.dir"),
                                          ("report_to", "set logger.kind instead"), ("max_length", "set data.max_length")])
def test_trl_keys_lw_sets_from_its_own_settings_are_refused_pointing_there(key, setting):
    cfg = compose_lw(f"trainer.args.{key}=1")
    with pytest.raises(UserError, match=f"trainer.args.{key}: lw sets it; {setting}"):
        trainer_for(cfg).training_args(cfg, Path("unused"), "none")


THROWAWAY_TRAINER = '''
"""A trainer added as docs/architecture.md says: this module, a YAML and one registry line."""
from dataclasses import dataclass
from pathlib import Path

from trl import SFTConfig, SFTTrainer

from lw.config import TrainerConfig
from lw.train import sft
from lw.run_dir import checkpoint_dir
from lw.train.fit import fit_and_save
from lw.train.registry import trainer_config, trl_args


@dataclass
class ThrowawayConfig(TrainerConfig):
    note: str = "unset"


CONFIG = ThrowawayConfig
build_dataset = sft.build_dataset


def training_args(cfg, checkpoint_dir: Path, report_to: str) -> SFTConfig:
    trainer_config(cfg)
    return SFTConfig(output_dir=str(checkpoint_dir), seed=cfg.seed, report_to=report_to, use_cpu=True,
                     completion_only_loss=True, **trl_args(cfg, SFTConfig))


def train(cfg, model, tokenizer, dataset, run_dir: Path, report_to: str, callbacks=None) -> Path:
    (Path(run_dir) / "note.txt").write_text(trainer_config(cfg).note)
    trainer = SFTTrainer(model=model, args=training_args(cfg, checkpoint_dir(run_dir), report_to),
                         train_dataset=dataset, processing_class=tokenizer, callbacks=callbacks)
    return fit_and_save(trainer, tokenizer, run_dir, cfg.model.chat_format, cfg.model.stop_tokens)
'''


def test_a_throwaway_trainer_registered_in_a_test_runs_through_lw_and_writes_its_model(tmp_path):
    (tmp_path / "throwaway_trainer.py").write_text(THROWAWAY_TRAINER)
    (tmp_path / "conf" / "trainer").mkdir(parents=True)
    (tmp_path / "conf" / "trainer" / "throwaway.yaml").write_text(
        "kind: throwaway\ninit_from: null\nbase: null\nnote: unset\nargs:\n  max_steps: 2\n"
        "  per_device_train_batch_size: 4\n  learning_rate: 1.0e-3\n  save_strategy: 'no'\n")
    (tmp_path / "lw_with_throwaway.py").write_text(textwrap.dedent(f"""
        import sys
        sys.path.insert(0, {str(tmp_path)!r})
        from lw.train.registry import TRAINERS
        TRAINERS["throwaway"] = "throwaway_trainer"  # the one registry line
        from lw.cli import main
        main()
    """))
    run_dir = tmp_path / "run"
    result = subprocess.run(
        [sys.executable, str(tmp_path / "lw_with_throwaway.py"), f"hydra.searchpath=[file://{tmp_path / 'conf'}]",
         "experiment=smoke", "trainer=throwaway", "trainer.note=written", "trainer.args.max_steps=1",
         "eval.toy_ruler.lengths=[12]", "eval.toy_ruler.samples_per_prompt=1", "generation.max_new_tokens=4",
         "logger=none", f"hydra.run.dir={run_dir}", f"cache_dir={tmp_path / 'cache'}"],
        cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-4000:]
    assert (run_dir / "model" / "config.json").exists() and (run_dir / "note.txt").read_text() == "written"
    saved = OmegaConf.load(run_dir / ".hydra" / "config.yaml")
    assert saved.trainer.kind == "throwaway" and saved.trainer.note == "written"
    assert json.loads((run_dir / "metrics.json").read_text())


THROWAWAY_TASK = '''
"""A task added as docs/architecture.md says: this module and one line in TASKS."""
import json
from pathlib import Path

from lw.errors import UserError
from lw.tasks.registry import Task


def check(cfg, run_dir: Path) -> None:
    if cfg.generation.max_new_tokens < 1:
        raise UserError(f"task=throwaway needs generation.max_new_tokens >= 1, got {cfg.generation.max_new_tokens}")


def run(cfg, run_dir: Path, tracker, tokenizer=None) -> dict:
    (Path(run_dir) / "echo.json").write_text(json.dumps({"seed": cfg.seed, "model": cfg.model.name}))
    return {"throwaway/seed": cfg.seed}


TASK = Task(run=run, summary="writes echo.json with the seed and model name", uses_torch=False, check=check)
'''


@pytest.mark.slow
def test_a_throwaway_task_registered_in_a_test_runs_through_lw(tmp_path, monkeypatch):
    (tmp_path / "throwaway_task.py").write_text(THROWAWAY_TASK)
    (tmp_path / "lw_with_throwaway.py").write_text(textwrap.dedent(f"""
        import sys
        sys.path.insert(0, {str(tmp_path)!r})
        from lw.tasks.registry import TASKS
        TASKS["throwaway"] = "throwaway_task"  # the one table line
        from lw.cli import main
        main()
    """))

    def lw(*overrides):
        return subprocess.run([sys.executable, str(tmp_path / "lw_with_throwaway.py"), "task=throwaway", "logger=none",
                               f"cache_dir={tmp_path / 'cache'}", *overrides], cwd=tmp_path, capture_output=True,
                              text=True, timeout=300)

    run_dir = tmp_path / "run"
    result = lw("seed=7", f"hydra.run.dir={run_dir}")
    assert result.returncode == 0, result.stderr[-4000:]
    assert json.loads((run_dir / "echo.json").read_text()) == {"seed": 7, "model": "tiny"}
    assert json.loads((run_dir / "metrics.json").read_text())["throwaway/seed"] == 7
    refused = lw("generation.max_new_tokens=0", f"hydra.run.dir={tmp_path / 'refused'}")
    assert refused.returncode == 2 and "lw: error: task=throwaway needs generation.max_new_tokens >= 1, got 0" \
        in refused.stderr
    assert not (tmp_path / "refused" / "echo.json").exists()
    # `lw --help` lists it from its declaration.
    from lw.tasks import TASKS

    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setitem(TASKS, "throwaway", "throwaway_task")
    assert "task=throwaway: writes echo.json with the seed and model name" in compose_lw().hydra.help.header


def test_paper_experiments_differ_only_in_the_model():
    glm = OmegaConf.to_container(compose_lw("experiment=longwriter_glm4_9b"), resolve=False)
    llama = OmegaConf.to_container(compose_lw("experiment=longwriter_llama3_1_8b"), resolve=False)
    differs = sorted(k for k in glm if k != "hydra" and glm[k] != llama[k])
    assert differs == ["model"]
    recipe = glm["trainer"]["args"]
    assert (recipe["learning_rate"], recipe["num_train_epochs"], recipe["lr_scheduler_type"], recipe["warmup_steps"],
            recipe["weight_decay"], recipe["adam_beta1"], recipe["adam_beta2"], recipe["bf16"],
            recipe["activation_checkpointing"]) == (1e-5, 4, "cosine", 0.03, 0.1, 0.9, 0.95, True, True)


def test_misspelt_key_fails_at_compose():
    with pytest.raises(ConfigCompositionException, match="seeed"):
        compose_lw("seeed=1")
    with pytest.raises(ConfigCompositionException, match="max_outpt_words"):
        compose_lw("data.max_outpt_words=5")


def test_wrong_type_and_unknown_option_fail_at_compose():
    with pytest.raises(ConfigCompositionException, match="seed"):
        compose_lw("seed=abc")
    with pytest.raises(ConfigCompositionException, match="tinny"):
        compose_lw("model=tinny")


@pytest.mark.slow
def test_misspelt_trainer_option_fails_before_any_work(tmp_path):
    # With or without "+", the TRL config's fields refuse it at start, before data or weights.
    for override in ("trainer.args.lerning_rate=0.1", "+trainer.args.lerning_rate=0.1"):
        result = run_lw(override, "logger=none", cwd=tmp_path, check=False)
        assert result.returncode == 2
        assert ("lw: error: trainer.args.lerning_rate is not an option of trl.SFTConfig; did you mean "
                "learning_rate") in result.stderr
    assert not list(tmp_path.glob("runs/*/data"))


@pytest.mark.slow
def test_cli_help_and_cfg_job_work_offline(tmp_path):
    assert "Configuration groups" in run_lw("--help", cwd=tmp_path).stdout
    job = run_lw("model=glm4_9b", "--cfg", "job", cwd=tmp_path).stdout
    assert "zai-org/glm-4-9b-hf" in job and "chat_format: glm4" in job


@pytest.mark.slow
def test_misspelt_override_on_the_command_line(tmp_path):
    result = run_lw("data.max_outpt_words=5", cwd=tmp_path, check=False)
    assert result.returncode != 0
    assert "max_outpt_words" in result.stderr


@pytest.mark.slow
@pytest.mark.parametrize("override", ["+judge.api_key=sk-test-123", "+logger.hf_token=sk-test-123",
                                      "+trainer.args.hub_token=sk-test-123", "++judge.api_key=sk-test-123",
                                      "judge.api_key=sk-test-123", "~judge.api_key=sk-test-123",
                                      "+data.credentials=sk-test-123", "+judge.password=sk-test-123"])
@pytest.mark.parametrize("mode", [[], ["-m"]])
def test_a_secret_override_stops_lw_before_anything_is_written(tmp_path, override, mode):
    result = run_lw(*mode, override, "dry_run=true", cwd=tmp_path, check=False)
    key = override.split("=")[0].lstrip("+~")
    assert result.returncode != 0 and f"lw: error: {key}: secrets are never passed as overrides" in result.stderr
    assert "environment variable" in result.stderr and "sk-test-123" not in result.stdout + result.stderr
    assert not list(tmp_path.iterdir())  # no runs/, multirun/ or outputs/


@pytest.mark.slow
def test_naming_the_key_variable_is_not_a_secret(tmp_path):
    assert "api_key_env: MY_KEY" in run_lw("judge=openai", "judge.api_key_env=MY_KEY", "--cfg", "job",
                                           cwd=tmp_path).stdout


def test_run_name_is_derived_from_overrides():
    assert run_name([]) == "default"
    assert run_name(["seed=1", "data.max_output_words=500"]) == "data.max_output_words-500+seed-1"
    assert run_name(["eval.x.lengths=[12,50]"]) == "eval.x.lengths-_12_50"
    long = run_name(["x=" + "a" * 300])
    assert len(long) <= 120 and long != run_name(["x=" + "a" * 299 + "b"])
    assert run_name(["logger=none", "seed=2"], excluded=["logger"]) == "seed-2"


def test_run_names_show_paths_by_their_last_component_and_lead_with_the_task():
    assert run_name(["data.path=/scratch/me/sets/long_mix.jsonl"]) == "data.path-long_mix.jsonl"
    assert run_name(["score.predictions=preds/glm.jsonl", "judge=openai"], task="score") == \
        "score+judge-openai+score.predictions-glm.jsonl"
    # Our own checkpoints all end in model/: the run folder above it names them.
    assert run_name(["model.path=runs/data.max_output_words-500/model"], task="eval") == \
        "eval+model.path-data.max_output_words-500_model"
    assert run_name(["eval.longbench_write.data_dir=/data/longwriter/"]) == "eval.longbench_write.data_dir-longwriter"
    assert run_name(["judge.base_url=http://127.0.0.1:9/v1"]) == "judge.base_url-http_127.0.0.1_9_v1"  # a URL stays whole
    cfg = compose_lw("task=eval", "model.path=/a/b/ckpt", "logger=none", "seed=3")
    assert cfg.run_name == "eval+model.path-ckpt+seed-3"


def test_result_neutral_settings_stay_out_of_run_names():
    cfg = compose_lw("logger=none", "task=eval", "seed=3")
    assert cfg.hydra.job.override_dirname == "seed-3"


def test_run_name_settings_are_derived_from_the_schema_as_they_were_listed_by_hand():
    """exclude_keys and the path settings come from lw/config.py's marks; the same lists conf/config.yaml
    and lw/cli.py kept by hand before (plus W&B's timeouts, added since), so no run's name or directory changes."""
    from lw.cli import PATH_SETTINGS

    cfg = compose_lw()
    assert sorted(cfg.hydra.job.config.override_dirname.exclude_keys) == sorted([
        "task", "dry_run", "logger", "logger.kind", "logger.project", "logger.entity", "logger.group",
        "logger.name", "logger.tags", "logger.mode", "logger.init_timeout", "logger.on_unreachable",
        "logger.finish_timeout", "launcher", "launcher.kind", "launcher.runner",
        "launcher.node_rank", "launcher.master_addr", "launcher.master_port", "launcher.backend",
        "launcher.log_tail_lines", "launcher.collective_timeout_s", "cache_dir", "generation.batch_size",
        "generation.concurrency", "generation.timeout", "generation.retries", "judge.concurrency", "judge.timeout",
        "judge.retries", "judge.cache", "agentwrite.price_input_per_million", "agentwrite.price_output_per_million",
        "judge.price_input_per_million", "judge.price_output_per_million"])
    assert PATH_SETTINGS == {"path", "data_dir", "predictions", "template", "instructions", "prompts", "outline_prompt",
                             "write_prompt", "init_from", "file"}
    assert compose_lw("launcher.master_port=5", "generation.concurrency=3", "agentwrite.price_input_per_million=2",
                      "agentwrite.outline_prompt=/a/b/outline.txt").run_name == "agentwrite.outline_prompt-outline.txt"
