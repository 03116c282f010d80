"""Every config composes against the typed schema; bad overrides fail at start, clearly."""

from pathlib import Path

import pytest
from hydra.errors import ConfigCompositionException
from omegaconf import OmegaConf

from lw.cli import CONFIG_DIR, run_name
from lw.config import TrainerConfig, TrainerKind
from lw.data.settings import DEFAULT_MAX_LENGTH, max_length_of
from lw.train.registry import TRAINERS, trainer_for

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


def test_every_task_has_one_module_with_run():
    from lw.tasks import TASKS, task_module

    assert len(set(TASKS.values())) == len(TASKS)
    for name in TASKS:
        assert callable(task_module(name).run), f"{TASKS[name]} lacks run"


def test_an_unknown_task_names_the_closest_and_the_valid_ones():
    from lw.errors import UserError
    from lw.tasks import task_module

    with pytest.raises(UserError, match="task=trian is not a task; did you mean task=train"):
        task_module("trian")
    with pytest.raises(UserError, match="valid tasks: train, prepare, eval, score, dpo_pairs, agentwrite"):
        task_module("zzz")


@pytest.mark.parametrize("kind", list(TrainerKind))
def test_every_trainer_kind_has_a_module_with_the_trainer_functions(kind):
    module = trainer_for(OmegaConf.create({"trainer": {"kind": kind.value}}))
    assert module.__name__ == TRAINERS[kind]
    for name in ("training_args", "build_dataset", "train"):
        assert callable(getattr(module, name)), f"{module.__name__} lacks {name}"


@pytest.mark.parametrize("option", group_options("trainer"))
def test_trainer_yaml_holds_every_option_a_researcher_sets(option):
    """A trainer option's file names each of its settings (one default, in the YAML)."""
    raw = OmegaConf.load(Path(CONFIG_DIR) / "trainer" / f"{option}.yaml")
    required = [name for name, f in TrainerConfig.__dataclass_fields__.items() if name != "args"]
    assert sorted(set(required) - set(raw)) == [], f"trainer/{option}.yaml lacks these settings"
    assert raw.kind in {k.value for k in TrainerKind}


def test_unknown_trainer_kind_fails_at_compose():
    with pytest.raises(ConfigCompositionException, match="kind"):
        compose_lw("trainer.kind=ppo")


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
    # Hydra refuses a new key without "+"; with it, SFTConfig refuses it before data or weights.
    assert "lerning_rate" in run_lw("trainer.args.lerning_rate=0.1", cwd=tmp_path, check=False).stderr
    result = run_lw("+trainer.args.lerning_rate=0.1", "logger=none", cwd=tmp_path, check=False)
    assert result.returncode != 0
    assert "lerning_rate" in result.stderr and "trl.SFTConfig" in result.stderr
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
