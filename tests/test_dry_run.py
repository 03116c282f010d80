"""`dry_run=true`: every experiment through the entry point (one Hydra multirun), the paper plans
against docs/science.md section 4, and the planner's arithmetic. Nothing may load weights."""

import json
import math

import pytest

from helpers import compose_lw, run_lw, training_plan
from test_config import group_options

EXPERIMENTS = group_options("experiment")
PAPER = {"longwriter_glm4_9b": 9.40e9, "longwriter_llama3_1_8b": 8.03e9}
# On 8 x 80 GiB (launcher.deepspeed=auto), with the SFT loss through TRL's fused LM head.
OFFLOAD = {"longwriter_glm4_9b": False, "longwriter_llama3_1_8b": False}


@pytest.fixture(scope="module")
def plans(tmp_path_factory):
    cwd = tmp_path_factory.mktemp("dry_run")
    result = run_lw("-m", f"experiment={','.join(EXPERIMENTS)}", "dry_run=true", "logger=none", cwd=cwd)
    found = {}
    for path in cwd.glob("multirun/*/*/plan.json"):
        plan = json.loads(path.read_text())
        found[plan["run_name"].removeprefix("experiment-")] = plan
    return found, result, cwd


@pytest.mark.slow
def test_every_experiment_has_a_plan_and_nothing_was_loaded_or_written(plans):
    found, result, cwd = plans
    assert sorted(found) == EXPERIMENTS
    for name in EXPERIMENTS:
        assert f"plan for experiment-{name} (dry run" in result.stdout
    assert not list(cwd.rglob("*.safetensors")) and not list(cwd.rglob("checkpoints"))
    assert not list(cwd.rglob("train.jsonl")) and not list(cwd.rglob("wandb"))


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(PAPER))
def test_paper_plans_follow_the_paper(plans, name):
    plan = plans[0][name]
    model, data, optimizer, deepspeed = plan["model"], plan["data"], plan["optimizer"], plan["deepspeed"]
    assert model["parameters"] == pytest.approx(PAPER[name], rel=0.01)
    assert model["max_position_embeddings"] == 131072  # GLM-4's raised by config_overrides
    assert plan["launcher"]["world_size"] == 8 and plan["launcher"]["nproc_per_node"] == 8
    assert data["pack_length"] == 32768 and data["global_batch"] == 8 and data["tokens_per_step"] == 8 * 32768
    assert data["epochs"] == 4 and data["total_steps"] == 4 * data["steps_per_epoch"]
    assert 2500 <= data["total_steps"] <= 3000  # "about 2,500-3,000 steps"
    assert data["warmup_steps"] == math.ceil(0.03 * data["total_steps"])
    assert data["counted"] == "assumed" and any("plan.sources" in a for a in plan["assumptions"])
    assert optimizer == {"learning_rate": 1e-5, "lr_scheduler_type": "cosine", "warmup_steps": data["warmup_steps"],
                         "weight_decay": 0.1, "adam_betas": [0.9, 0.95], "bf16": True,
                         "activation_checkpointing": True}
    # launcher.deepspeed=auto on 8 x 80 GiB: with the fused LM head (no 32k x 151,552 logits) both
    # models' 16 bytes a parameter over 8 ranks and their activations fit 80 GiB less 4 of headroom.
    choice, offload = deepspeed["choice"], OFFLOAD[name]
    assert (choice["requested"], choice["chosen"], choice["fits_without_offload"]) == (
        "auto", "zero3_offload" if offload else "zero3", not offload)
    assert (choice["gpu_per_rank_gib"]["zero3"] > 80 - 4) == offload
    assert choice["gpu_per_rank_gib"]["zero3_offload"] < 80 - 4
    assert (deepspeed["stage"], deepspeed["offload_optimizer"], deepspeed["offload_param"]) == (
        (3, "cpu", "cpu") if offload else (3, "none", "none"))
    assert deepspeed["optimizer"] == "torch AdamW (the trainer's)"  # measured faster than DeepSpeed's CPU Adam
    config = deepspeed["config"]
    assert config["train_batch_size"] == 8 and config["train_micro_batch_size_per_gpu"] == 1
    assert config["bf16"]["enabled"] is True and config["fp16"]["enabled"] is False
    assert "optimizer" not in config
    assert config["zero_optimization"]["reduce_bucket_size"] == 4096 * 4096  # "auto" filled from the model
    memory = plan["memory"]
    # Host RAM of the offload: 18 bytes per parameter on the one node (fp32 weights, Adam, fp32 grads, bf16).
    assert sum(v for k, v in memory["host_per_node_gib"].items() if "estimate" not in k) == pytest.approx(
        18 * model["parameters"] / 1024**3 if offload else 0, rel=1e-3)
    assert memory["fits_gpu"] and 3 < memory["gpu_per_rank_gib"]["activations_fused_lm_head"] < 4
    assert "activations_logits_and_loss" not in memory["gpu_per_rank_gib"]
    command = plan["launcher"]["command"]
    assert "--nproc-per-node 8" in command and command.endswith(f"-m lw.train.worker {command.split()[-1]}")
    # Attention on the GPU ranks: an implementation whose cost follows the samples, with what sdpa would cost.
    attention = plan["attention"]
    assert attention["implementation"] in ("flex_attention", "flash_attention_2") and attention["requested"] == "auto"
    assert (attention["device"], attention["packing"], attention["cost_follows"]) == ("cuda", True, "samples")
    assert "activations_attention_mask" not in memory["gpu_per_rank_gib"]
    # plan.sources: 6,000 samples of 9,000 tokens and 180,000 of 600, causal each; 4,994 rows of 32,440 dense.
    per_sample = 6000 * 9000 * 9001 / 2 + 180000 * 600 * 601 / 2
    assert attention["per_sample_pairs"] == pytest.approx(per_sample, rel=1e-9)
    assert attention["dense_pairs"] == pytest.approx(data["packs"] * (data["tokens"] / data["packs"]) ** 2, rel=1e-9)
    assert attention["sdpa_over_per_sample_attention_flops"] == pytest.approx(attention["dense_pairs"] / per_sample,
                                                                               rel=1e-3)
    assert attention["sdpa_mask_bytes"] == 32768**2 * (1 + 2)  # the boolean mask and one layer's bf16 copy
    # Model FLOPs per token: the matrix multiplies (neither paper model ties its output layer) and
    # attention within each sample of plan.sources, 12 x layers x heads x head width a causal pair.
    heads, head_dim = (32, 128)
    matmul = 6 * (model["parameters"] - model["vocab_size"] * model["hidden_size"])
    assert model["matmul_flops_per_token"] == matmul
    assert model["train_flops_per_token"] == pytest.approx(
        matmul + 12 * model["layers"] * heads * head_dim * per_sample / data["tokens"], rel=1e-9)
    line = next(x for x in plans[1].stdout.splitlines() if x.startswith(f"plan for experiment-{name}"))
    block = plans[1].stdout.split(line, 1)[1]
    assert f"  offload    {choice['chosen']} (launcher.deepspeed=auto: the fastest that fits): without offload a " \
           f"rank needs {choice['gpu_per_rank_gib']['zero3']:.1f} GiB" in block
    assert ("does not fit without offload" if offload else "fits without offload") in block
    assert f"  attention  {attention['implementation']} (auto, on cuda, packs from plan.sources): cost follows the " \
           f"samples; sdpa would need a 3.0 GiB mask for each 32768-token row and " \
           f"{attention['sdpa_over_per_sample_attention_flops']:.1f}x the attention FLOPs" in block


@pytest.mark.slow
def test_tiny_plan_counts_the_tokenized_data(plans):
    plan = plans[0]["smoke"]
    data = plan["data"]
    assert data["counted"] == "tokenized" and data["sequences"] == 96 and data["tokens"] > 96 * 10
    assert data["steps_per_epoch"] == 12 and data["total_steps"] == 6  # 96 / 8 per step; max_steps 6
    assert plan["deepspeed"] is None and plan["launcher"]["command"].startswith("(in process")


def test_plan_for_two_nodes_and_packing(tmp_path):
    cfg = compose_lw("experiment=smoke", "launcher=deepspeed", "launcher.nproc_per_node=2", "launcher.nnodes=2",
                     "launcher.master_port=29400", "launcher.master_addr=node0", "data.pack_length=512",
                     "data.max_length=512")
    plan = training_plan(cfg, tmp_path)
    data = plan["data"]
    assert plan["launcher"]["world_size"] == 4 and data["global_batch"] == 32
    assert math.ceil(data["tokens"] / 512) <= data["packs"] < data["sequences"]
    assert data["packing_efficiency"] == pytest.approx(data["tokens"] / (data["packs"] * 512), abs=1e-4)
    assert data["steps_per_epoch"] == math.ceil(math.ceil(data["packs"] / 4) / 8)
    assert plan["deepspeed"]["config"]["train_batch_size"] == 32
    assert "--nnodes 2 --nproc-per-node 2 --node-rank 0 --master-addr node0 --master-port 29400" \
        in plan["launcher"]["command"]


def test_plan_of_sdpa_on_packs_counts_the_mask_and_the_extra_flops_of_the_real_packs(tmp_path):
    """The tokenized packs' own lengths: each sample's causal pairs against one dense square per row
    (a micro-batch of packs joined into one padding-free row), and the mask in the GPU memory."""
    from lw.data import build_sft_dataset
    from lw.models import build_tokenizer

    overrides = ("experiment=smoke", "data.pack_length=512", "data.max_length=512", "model.attn_implementation=sdpa",
                 "plan.device=cpu", "trainer.args.per_device_train_batch_size=2", f"cache_dir={tmp_path / 'cache'}")
    cfg = compose_lw(*overrides)
    plan = training_plan(cfg, tmp_path / "plan")
    attention, memory = plan["attention"], plan["memory"]
    dataset, _ = build_sft_dataset(cfg, build_tokenizer(cfg.model, cfg.cache_dir), tmp_path / "run")
    packs = dataset["seq_lengths"]
    per_sample = sum(n * (n + 1) // 2 for pack in packs for n in pack)
    rows = [sum(packs[i]) + (sum(packs[i + 1]) if i + 1 < len(packs) else 0) for i in range(0, len(packs), 2)]
    assert len(packs) > 2 and attention["length_mix"] == "the tokenized packs"
    assert (attention["implementation"], attention["cost_follows"]) == ("sdpa", "pack")
    assert (attention["per_sample_pairs"], attention["dense_pairs"]) == (per_sample, sum(r * r for r in rows))
    assert attention["sdpa_over_per_sample_attention_flops"] > 2  # packs of many short samples
    assert 0 < attention["sdpa_extra_flops_share"]
    # fp32 on CPU, no activation checkpointing: the boolean mask and each of the 2 layers' fp32 copy, row 2 x 512.
    assert attention["row_tokens"] == 1024 and attention["sdpa_mask_bytes"] == 1024**2 * (1 + 4 * 2)
    assert memory["gpu_per_rank_gib"]["activations_attention_mask"] == round(1024**2 * 9 / 1024**3, 3)


def test_plan_names_the_attention_of_the_workers_device_and_refuses_what_cannot_run_there(tmp_path):
    glm = ("experiment=longwriter_glm4_9b", "dry_run=true")  # the dry run's own check is the workers' device
    assert training_plan(compose_lw(*glm, "plan.device=cpu"), tmp_path)["attention"]["implementation"] == "sdpa"
    sdpa = training_plan(compose_lw(*glm, "model.attn_implementation=sdpa"), tmp_path)
    assert sdpa["attention"]["cost_follows"] == "pack"
    assert sdpa["memory"]["gpu_per_rank_gib"]["activations_attention_mask"] == 3.0
    flex = training_plan(compose_lw(*glm, "model.attn_implementation=flex_attention"), tmp_path)["attention"]
    assert (flex["implementation"], flex["cost_follows"]) == ("flex_attention", "samples")
    with pytest.raises(ValueError, match="flex_attention: PyTorch's flex attention has no backward pass on CPU"):
        training_plan(compose_lw(*glm, "model.attn_implementation=flex_attention", "plan.device=cpu"), tmp_path)
    unpacked = training_plan(compose_lw("experiment=smoke"), tmp_path)["attention"]
    assert unpacked == {"implementation": "sdpa", "requested": "auto", "device": "cpu", "packing": False}


def test_plan_without_a_local_tokenizer_needs_stated_data_sizes(tmp_path):
    cfg = compose_lw("model=glm4_9b")
    with pytest.raises(ValueError, match="plan.sources"):
        training_plan(cfg, tmp_path)


def test_steps_per_epoch_under_gradient_accumulation_as_the_hf_trainer_counts(tmp_path):
    """The HF Trainer's rule: each rank takes ceil(units / world) units in ceil(. / micro) micro-batches, and an
    epoch's optimizer steps are ceil(micro-batches / accumulation) (its last step takes the remainder).
    96 sequences, micro-batches of 5, accumulation 3: 20 micro-batches, 7 steps an epoch (6 by floor);
    on 2 ranks 48 each, 10 micro-batches, 4 steps (3 by floor)."""
    from lw.data import build_sft_dataset
    from lw.models import build_model, build_tokenizer
    from lw.train.sft import build_trainer

    overrides = ("experiment=smoke", "trainer.args.per_device_train_batch_size=5",
                 "trainer.args.gradient_accumulation_steps=3", "trainer.args.max_steps=-1",
                 "+trainer.args.num_train_epochs=2", f"cache_dir={tmp_path / 'cache'}")
    cfg = compose_lw(*overrides)
    data = training_plan(cfg, tmp_path / "one")["data"]
    assert (data["sequences"], data["packs"], data["global_batch"]) == (96, None, 15)
    assert (data["steps_per_epoch"], data["total_steps"]) == (7, 14)
    two = training_plan(compose_lw(*overrides, "launcher=deepspeed", "launcher.nproc_per_node=2"), tmp_path / "two")
    assert (two["data"]["steps_per_epoch"], two["data"]["total_steps"]) == (4, 8)

    # The real Trainer on the same data in one process counts the same (nothing is trained).
    tokenizer = build_tokenizer(cfg.model, cfg.cache_dir)
    dataset, stats = build_sft_dataset(cfg, tokenizer, tmp_path / "run")
    assert stats["sequences_packed"] == 96
    trainer = build_trainer(cfg, build_model(cfg.model, tokenizer, seed=0), tokenizer, dataset, tmp_path / "run", "none")
    values = trainer.set_initial_training_values(trainer.args, trainer.get_train_dataloader())
    per_epoch, max_steps = values[1], values[-1]
    assert (len(trainer.get_train_dataloader()), per_epoch, max_steps) == (20, 7, 14)


@pytest.mark.slow
def test_the_paper_grpo_plan_counts_completions_and_plans_their_generation(plans):
    plan = plans[0]["longwriter_glm4_9b_grpo"]
    data, trainer, memory = plan["data"], plan["trainer"], plan["memory"]
    assert trainer["kind"] == "grpo" and trainer["reference"].startswith("none (beta = 0")
    assert trainer["generation"] == "8 completions per prompt of up to 16384 tokens, by vLLM (colocate)"
    # 6,000 prompts x 8 completions, 8 ranks x 1 completion x 8 accumulation steps = 64 a step.
    assert data["global_batch"] == 64 and data["steps_per_epoch"] == 6000 * 8 // 64 and data["total_steps"] == 400
    assert data["tokens_per_sequence"] == 1024 + 16384 and data["pack_length"] is None
    assert memory["gpu_per_rank_gib"]["generation_vllm_share"] == pytest.approx(0.3 * 80)
    assert memory["fits_gpu"] and plan["deepspeed"]["stage"] == 3
    assert any("generation and the training pass do not overlap" in a for a in plan["assumptions"])


def test_auto_deepspeed_offloads_only_where_the_gpus_cannot_hold_the_run(tmp_path):
    """The estimate against the first H200 run (12 of GLM-4-9B's 40 layers, one GPU, 32k tokens,
    conf/deepspeed/README.md): measured peaks 114.6 GiB without offload, 61.5 GiB with it, both with
    full logits (the HF Trainer's loss then), so planned with trainer.fused_lm_head=false."""
    glm = ("experiment=longwriter_glm4_9b", "trainer.fused_lm_head=false")
    h200 = training_plan(compose_lw(*glm, "model.arch.num_hidden_layers=12", "launcher.nproc_per_node=1",
                                 "plan.gpu_memory_gib=141"), tmp_path / "h200")
    choice = h200["deepspeed"]["choice"]
    assert 114.6 <= choice["gpu_per_rank_gib"]["zero3"] <= 114.6 * 1.05
    assert 61.5 * 0.95 <= choice["gpu_per_rank_gib"]["zero3_offload"] <= 61.5 * 1.05
    assert (choice["chosen"], choice["fits_without_offload"]) == ("zero3", True)
    assert (h200["deepspeed"]["offload_optimizer"], h200["deepspeed"]["offload_param"]) == ("none", "none")
    assert h200["memory"]["gpu_per_rank_gib"]["model_states"] == pytest.approx(16 * 3689048064 / 1024**3, abs=1e-3)
    assert "fits without offload" in choice["reason"]
    # 8 x H200: the full model fits without offload; one 24 GiB GPU needs it.
    assert training_plan(compose_lw(*glm, "plan.gpu_memory_gib=141"), tmp_path / "8h200")["deepspeed"]["choice"][
        "chosen"] == "zero3"
    small = training_plan(compose_lw(*glm, "launcher.nproc_per_node=1", "plan.gpu_memory_gib=24"), tmp_path / "small")
    assert (small["deepspeed"]["choice"]["chosen"], small["deepspeed"]["offload_param"]) == ("zero3_offload", "cpu")
    # An explicit choice is kept, and the plan still says whether it needed to offload.
    kept = training_plan(compose_lw(*glm, "launcher.deepspeed=zero3_offload_cpuadam", "plan.gpu_memory_gib=141"),
                      tmp_path / "kept")
    assert kept["deepspeed"]["choice"]["chosen"] == "zero3_offload_cpuadam"
    assert kept["deepspeed"]["choice"]["fits_without_offload"] and kept["deepspeed"]["offload_param"] == "cpu"


@pytest.mark.slow
def test_the_dpo_plan_holds_two_sequences_a_pair_and_grpo_one_a_completion(plans):
    """Activation memory per rank: a DPO pair is its chosen and its rejected answer in one batch;
    a GRPO training sequence is one prompt and one completion."""
    gib = 1024**3
    dpo, grpo = plans[0]["longwriter_glm4_9b_dpo"], plans[0]["longwriter_glm4_9b_grpo"]
    for plan, sequences in ((dpo, 2), (grpo, 1)):
        memory, data, model = plan["memory"]["gpu_per_rank_gib"], plan["data"], plan["model"]
        micro = plan["deepspeed"]["config"]["train_micro_batch_size_per_gpu"]
        tokens = micro * sequences * data["tokens_per_sequence"]  # 2 x 32,768 a DPO pair; 1,024 + 16,384 GRPO
        assert memory["activations_layer_inputs"] == round(model["layers"] * tokens * model["hidden_size"] * 2 / gib, 3)
    assert dpo["data"]["tokens_per_sequence"] == 32768 and dpo["trainer"]["sequences_per_example"] == 2
    # DPO's reference pass is precomputed (no second model); GRPO at beta 0 has none.
    assert "reference_largest_layer" not in dpo["memory"]["gpu_per_rank_gib"]
    assert "reference_largest_layer" not in grpo["memory"]["gpu_per_rank_gib"]


def test_the_fused_lm_head_replaces_the_logits_in_the_estimate(tmp_path, monkeypatch):
    """GLM-4-9B, 32k packs, 8 x 80 GiB: TRL's fused LM head holds one tile of TRL's size, the fp32
    gradient of the head weight and of the hidden states, and the hidden states it scores, instead
    of 46 GiB of logits and their fp32 loss; so the run fits without offload (43 GiB a rank), where
    with trainer.fused_lm_head=false it needs 86 GiB and offloads."""
    import trl.kernels.chunked_logprob as kernel

    gib, tokens, vocab, hidden = 1024**3, 32768, 151552, 4096
    fused = training_plan(compose_lw("experiment=longwriter_glm4_9b"), tmp_path / "fused")
    memory = fused["memory"]["gpu_per_rank_gib"]
    head = 4096 * 32768 * 2 + 4 * vocab * hidden + (4 + 2 + 2) * tokens * hidden + 32 * tokens
    assert memory["activations_fused_lm_head"] == round(head / gib, 3) and "activations_logits_and_loss" not in memory
    choice = fused["deepspeed"]["choice"]
    assert choice["chosen"] == "zero3" and choice["gpu_per_rank_gib"]["zero3"] < 76
    plain = training_plan(compose_lw("experiment=longwriter_glm4_9b", "trainer.fused_lm_head=false"), tmp_path / "plain")
    assert plain["memory"]["gpu_per_rank_gib"]["activations_logits_and_loss"] == round(tokens * vocab * 10 / gib, 3)
    assert plain["deepspeed"]["choice"]["chosen"] == "zero3_offload"
    assert plain["deepspeed"]["choice"]["gpu_per_rank_gib"]["zero3"] - choice["gpu_per_rank_gib"]["zero3"] == \
        pytest.approx((tokens * vocab * 10 - head) / gib, abs=0.02)
    # The tile follows the installed TRL's constants.
    monkeypatch.setattr(kernel, "TOKEN_CHUNK_SIZE", 8192)
    wider = training_plan(compose_lw("experiment=longwriter_glm4_9b"), tmp_path / "wider")
    assert wider["memory"]["gpu_per_rank_gib"]["activations_fused_lm_head"] == round(
        (head + 4096 * 32768 * 2) / gib, 3)


def test_the_grpo_plan_scores_completions_through_the_fused_lm_head(tmp_path):
    """TRL 1.16's GRPOTrainer takes the completions' log-probabilities from its fused LM head: a
    tile, in fp32 with cast_lm_head_to_fp32, and no (tokens x vocabulary) logits."""
    gib, vocab, hidden = 1024**3, 151552, 4096
    grpo = ("experiment=longwriter_glm4_9b_grpo",)
    gpu = training_plan(compose_lw(*grpo), tmp_path / "a")["memory"]["gpu_per_rank_gib"]
    fp32 = training_plan(compose_lw(*grpo, "trainer.args.cast_lm_head_to_fp32=true"),
                      tmp_path / "b")["memory"]["gpu_per_rank_gib"]
    assert "activations_logits_and_loss" not in gpu and gpu["activations_fused_lm_head"] > 4 * vocab * hidden / gib
    tokens = round(gpu["activations_layer_inputs"] * gib / (hidden * 2 * 40))  # 40 layers, bf16
    assert fp32["activations_fused_lm_head"] - gpu["activations_fused_lm_head"] == pytest.approx(
        (4096 * 32768 * 2 + 2 * tokens * hidden) / gib, abs=2e-3)
def test_an_estimate_within_the_headroom_of_the_gpus_memory_is_offloaded(tmp_path):
    """A run whose estimate lies between the GPU's memory less the headroom and the GPU's memory (77
    GiB of an 80 GiB GPU) does not fit: the CUDA context, NCCL and fragmentation take the rest."""
    glm = ("experiment=longwriter_glm4_9b", "model.arch.num_hidden_layers=12", "launcher.nproc_per_node=1")
    estimate = training_plan(compose_lw(*glm, "plan.gpu_memory_gib=141"), tmp_path / "a")["deepspeed"]["choice"][
        "gpu_per_rank_gib"]["zero3"]
    choice = training_plan(compose_lw(*glm, f"plan.gpu_memory_gib={estimate + 1:.3f}"), tmp_path / "b")["deepspeed"][
        "choice"]
    assert choice["headroom_gib"] > 1 and choice["gpu_per_rank_gib"]["zero3"] == pytest.approx(estimate)
    assert (choice["chosen"], choice["fits_without_offload"]) == ("zero3_offload", False)
    assert "does not fit without offload" in choice["reason"]


def test_zero3_states_shard_over_the_ranks_of_every_node(tmp_path):
    """16 bytes a parameter over all nproc_per_node x nnodes ranks: two nodes halve a rank's states."""
    gib = 1024**3
    glm = ("experiment=longwriter_glm4_9b", "plan.gpu_memory_gib=141")
    one = training_plan(compose_lw(*glm), tmp_path / "one")
    two = training_plan(compose_lw(*glm, "launcher.nnodes=2", "launcher.master_addr=node0", "launcher.master_port=29500"),
                     tmp_path / "two")
    assert two["launcher"]["world_size"] == 16
    for plan, ranks in ((one, 8), (two, 16)):
        params = plan["model"]["parameters"]
        assert plan["memory"]["gpu_per_rank_gib"]["model_states"] == pytest.approx(16 * params / ranks / gib, abs=1e-3)
        assert f"at 16 bytes a parameter over {ranks} ranks" in plan["deepspeed"]["choice"]["reason"]
