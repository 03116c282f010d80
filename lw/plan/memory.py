"""GPU memory per rank and host memory per node of a training run, estimated without loading weights.

Memory model (per rank; P parameters, L layers, hidden h, FFN width I, n_h query and n_kv
key/value heads of width d, vocabulary V, m sequences of s tokens per micro-batch, a bytes per
activation element: 2 in bf16, 4 in fp32):
- model states: DeepSpeed's own ZeRO-3 estimator (`estimate_zero3_model_states_mem_needs`):
  with parameters and optimizer offloaded the GPU holds the largest layer's 16-bit parameters and
  gradients (4 bytes per parameter of that layer); the host holds 18 bytes per parameter (fp32
  master weights 4, Adam moments 8, fp32 gradients 4, 16-bit parameters 2) x 1.5 for buffers.
- communication buffers: 2 bytes x (prefetch bucket + 2 x reduce bucket).
- activations with activation checkpointing: each layer keeps its input, L*m*s*h*a, and the
  layer being recomputed holds its activations and their gradients, 2*m*s*(4h + 2*n_h*d +
  2*n_kv*d + 4I)*a. Without checkpointing every layer holds its activations: L times the latter/2.
- the output layer and the loss. Through TRL's fused LM head (SFT by default, DPO, GRPO; TRL
  1.16's trl/kernels/chunked_logprob.py, Triton on the GPU): one projection tile of
  min(m*s, 4,096) tokens x 32,768 vocabulary entries in the head's dtype (TRL's module constants,
  read from the installed TRL), the fp32 accumulators of the head weight's gradient (4*V*h) and of
  the hidden states' (4*m*s*h) with its cast (a*m*s*h), the scored hidden states it keeps
  (m*s*h in the head's dtype) and a few fp32 numbers per token. With full logits
  (`trainer.fused_lm_head=false`): m*s*V*(a + 8), the logits, their fp32 copy for the loss and the
  fp32 log-softmax kept for the backward pass; at 32k tokens and a 150k vocabulary the largest term.
- attention scores: none with sdpa/flash/flex attention; m*n_h*s^2*a with eager attention.
- attention mask (sdpa on padding-free packs): transformers turns the restarting position ids of a
  row of T = m*s tokens into a dense boolean mask, T^2 bytes, and SDPA converts it to an additive
  mask of T^2*a bytes that each layer keeps for its backward pass (one layer at a time with
  activation checkpointing, L without).
"""

from __future__ import annotations

from omegaconf import DictConfig

from lw.plan.trainer_plan import TrainerPlan

GIB = 1024**3


def activation_bytes(cfg: DictConfig, args) -> int:
    """Bytes per activation element: 2 in bf16 or fp16, 4 in fp32."""
    return 2 if bool(args.bf16) or cfg.model.dtype in ("bfloat16", "float16") else 4


def plan_memory(cfg: DictConfig, args, hf_config, counts: dict, seq_len: int, nproc: int, nnodes: int,
                deepspeed: dict | None, shape: TrainerPlan, attention: dict | None = None) -> dict:
    """GPU memory per rank and host memory per node: model states, activations, the trainer's extras."""
    a = activation_bytes(cfg, args)
    activations = activation_memory(args, hf_config, a, args.per_device_train_batch_size * shape.sequences_per_example,
                                    seq_len, shape.full_logits, attention or {})
    assumptions = ["GPU and host memory are estimates (see lw/plan/memory.py); allow a few GiB for the CUDA "
                   "context and fragmentation"]
    if not shape.full_logits:
        assumptions.append("the trainer projects the LM head in tiles (TRL's fused LM head, Triton on the GPU; its "
                           "CPU fallback holds several fp32 copies of a tile): no (tokens x vocabulary) logits are "
                           "held")
    gpu, host_per_node = model_state_memory(cfg, counts, nproc, nnodes, deepspeed, assumptions)
    gpu.update({f"activations_{k}": v for k, v in activations.items()})
    gpu.update(shape.gpu_per_rank)
    trainer_host = dict(shape.host_per_node)
    if "reference_bf16_params" in trainer_host and deepspeed is not None and deepspeed["offload_param"] != "cpu":
        # A reference model sharded like the policy: without parameter offload its 16-bit shards stay
        # on the GPUs, one world's share per rank.
        gpu["reference_params_partition"] = trainer_host.pop("reference_bf16_params") * nnodes / (nproc * nnodes)
    host_per_node.update(trainer_host)
    total = sum(gpu.values())
    budget = cfg.plan.gpu_memory_gib
    return {
        "bytes_per_activation": a,
        "gpu_per_rank_gib": {k: round(v / GIB, 3) for k, v in gpu.items()},
        "gpu_per_rank_total_gib": round(total / GIB, 2),
        "gpu_memory_gib": budget,
        "fits_gpu": total / GIB <= budget,
        "host_per_node_gib": {k: round(v / GIB, 2) for k, v in host_per_node.items()},
        "assumptions": assumptions,
    }


def activation_memory(args, hf_config, a: int, m: int, seq_len: int, full_logits: bool, attention: dict) -> dict:
    """Activation bytes per rank by part, for m sequences of seq_len tokens (the model in this module's docstring)."""
    h, layers, ffn = hf_config.hidden_size, hf_config.num_hidden_layers, hf_config.intermediate_size
    heads = hf_config.num_attention_heads
    kv_heads = getattr(hf_config, "num_key_value_heads", None) or heads
    d = getattr(hf_config, "head_dim", None) or h // heads
    layer_width = 4 * h + 2 * heads * d + 2 * kv_heads * d + 4 * ffn
    if args.activation_checkpointing:
        activations = {"layer_inputs": layers * m * seq_len * h * a, "recomputed_layer": 2 * m * seq_len * layer_width * a}
    else:
        activations = {"all_layers": layers * m * seq_len * layer_width * a, "recomputed_layer": m * seq_len * layer_width * a}
    if full_logits:
        activations["logits_and_loss"] = m * seq_len * hf_config.vocab_size * (a + 8)
    else:
        head_bytes = 4 if getattr(args, "cast_lm_head_to_fp32", False) else a  # GRPOConfig's option
        activations["fused_lm_head"] = fused_lm_head_memory(hf_config, m * seq_len, a, head_bytes)
    implementation = attention.get("implementation")
    activations["attention_scores"] = m * heads * seq_len**2 * a if implementation == "eager" else 0
    if implementation == "sdpa" and attention.get("packing"):
        activations["attention_mask"] = attention["sdpa_mask_bytes"]
    return activations


def fused_lm_head_memory(hf_config, tokens: int, a: int, head_bytes: int) -> int:
    """Bytes TRL's fused LM head holds at its peak, the end of its backward pass over `tokens`
    scored positions (this module's docstring); the head's 16-bit weight and gradient are the
    gathered layer's."""
    from trl.kernels.chunked_logprob import TOKEN_CHUNK_SIZE
    from trl.trainer.utils import _CHUNKED_LOGPROB_CHUNK_SIZE

    h, vocab = hf_config.hidden_size, hf_config.vocab_size
    tile = min(tokens, TOKEN_CHUNK_SIZE) * min(vocab, _CHUNKED_LOGPROB_CHUNK_SIZE) * head_bytes
    return tile + 4 * vocab * h + (4 + a + head_bytes) * tokens * h + 8 * 4 * tokens


def model_state_memory(cfg: DictConfig, counts: dict, nproc: int, nnodes: int, deepspeed: dict | None,
                       assumptions: list[str]) -> tuple[dict, dict]:
    """(GPU bytes per rank, host bytes per node) of weights, gradients and optimizer states."""
    params, largest = counts["total"], counts["largest_layer"]
    gpu: dict[str, float] = {}
    host_per_node: dict[str, float] = {}
    if deepspeed is None or deepspeed["stage"] != 3:
        # One process, no sharding: weights, gradients and two Adam moments in the model's dtype.
        gpu["model_states"] = 4 * params * (2 if cfg.model.dtype in ("bfloat16", "float16") else 4)
        assumptions.append("no DeepSpeed: weights, gradients and Adam moments all on the device")
        return gpu, host_per_node
    from deepspeed.runtime.zero.stage3 import estimate_zero3_model_states_mem_needs

    offload_opt = deepspeed["offload_optimizer"] == "cpu"
    offload_param = deepspeed["offload_param"] == "cpu"
    cpu_mem, _, _ = estimate_zero3_model_states_mem_needs(
        params, largest, num_gpus_per_node=nproc, num_nodes=nnodes, cpu_offload=offload_opt,
        cpu_offload_params=offload_param, zero_init=True, additional_buffer_factor=1.5)
    zero = deepspeed["config"]["zero_optimization"]
    gpu.update(zero3_gpu_states(params, largest, nproc * nnodes, offload_opt, offload_param))
    gpu["communication_buffers"] = 2 * (zero.get("stage3_prefetch_bucket_size", 0)
                                        + 2 * zero.get("reduce_bucket_size", 0))
    host_per_node["model_states_deepspeed_estimate"] = cpu_mem
    if offload_opt:
        share = params / nnodes  # the node's ranks hold this many parameters' states together
        host_per_node.update({"fp32_master_params": 4 * share, "adam_moments": 8 * share,
                              "fp32_gradients": 4 * share, "bf16_params": 2 * share if offload_param else 0})
    return gpu, host_per_node


def zero3_gpu_states(params: int, largest: int, world: int, offload_optimizer: bool, offload_param: bool) -> dict:
    """Bytes per rank of ZeRO-3's model states on the GPU, as DeepSpeed allocates them with bf16
    (grad_accum_dtype = the model's dtype): each rank's partition of P/world parameters keeps its
    16-bit parameters (2 bytes), its 16-bit gradient partition (2), its fp32 master copy (4) and
    Adam's two fp32 moments (8): 16 bytes a parameter without offload. The optimizer offload moves
    all but the 16-bit parameters to the host, the parameter offload those too. The layer being
    computed is gathered whole: its 16-bit parameters and gradients, 4 bytes a parameter.
    (DeepSpeed's estimator counts 18 without offload: the step's fp32 gradient of a sub-group,
    which exists only after the backward pass has freed the activations.)"""
    share = params / world
    per_param = 0 if offload_param else 2
    if not offload_optimizer:
        per_param += 2 + 4 + 8
    return {"model_states": per_param * share, "gathered_layer": 4 * largest}
