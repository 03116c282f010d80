"""Continuous batching for `generation=hf`: transformers' paged-attention manager
(`model.init_continuous_batching`) admits a request as soon as the KV cache has room and hands each one
back the step it ends, so a short answer neither waits for the longest of its batch nor holds a slot.

Sampling is made reproducible per request, which the engine alone is not: it draws every request's
token from one global generator (`torch.multinomial` over the whole step), so a token depends on which
requests happen to share the step, and a resumed run (fewer requests) would sample differently.
`SeededSampling`, the last logits processor, draws each token itself by the Gumbel-max trick with
noise hashed from (the request's seed, the token's position): the engine then sees one token left and
its own draw can only pick it. A request's tokens are thus a function of its prompt, its seed and the
model alone (up to floating-point differences between batch shapes, as with any batched kernel).
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from typing import Callable, Optional

import torch
from transformers.generation.configuration_utils import ContinuousBatchingConfig
from transformers.generation.continuous_batching.cb_logits_processors import (
    ContinuousBatchingLogitsProcessor,
    ContinuousBatchingLogitsProcessorList,
)
from transformers.generation.continuous_batching.model_runner import infer_max_single_request_tokens
from transformers.generation.continuous_batching.utils import WorkloadHints
from transformers.generation.logits_process import LogitsProcessorList

from lw.errors import UserError

log = logging.getLogger(__name__)

MASK32 = 0xFFFFFFFF


@dataclass(frozen=True)
class Request:
    id: str  # unique: the engine's request id, and the key of the request's seed
    input_ids: list[int]
    max_new_tokens: int
    seed: int = 0  # used when sampling; lw passes item_seed(run seed, [id])


@dataclass(frozen=True)
class Memory:
    """The KV cache's bound: `blocks` of `block_size` tokens (None: enough for `concurrency` of the
    largest requests), within `fraction` of the device memory left free by the model."""

    concurrency: int
    blocks: Optional[int] = None
    block_size: int = 256
    max_batch_tokens: int = 1024
    fraction: float = 0.8


def _mul32(x, c: int):
    """x * c mod 2**32 for x < 2**32, in 16-bit halves: no int64 overflow for tensors or ints."""
    return (x * (c & 0xFFFF) + (((x * (c >> 16)) & 0xFFFF) << 16)) & MASK32


def mix32(x):
    """A 32-bit integer hash (lowbias32) of ints or int64 tensors below 2**32."""
    x = x ^ (x >> 16)
    x = _mul32(x, 0x7FEB352D)
    x = x ^ (x >> 15)
    x = _mul32(x, 0x846CA68B)
    return x ^ (x >> 16)


class SeededSampling(ContinuousBatchingLogitsProcessor):
    """Samples each request's next token from its (warped) scores with noise keyed by the request's
    seed and the token's position, and leaves that token alone with a finite score."""

    supported_kwargs: dict = {}
    ignored_kwargs: tuple = ()

    def __init__(self, seeds: dict[str, int]):
        self.seeds = seeds

    def fill_defaults(self, int32_tensor: torch.Tensor) -> None:
        int32_tensor.fill_(0)

    def prepare_tensor_args(self, requests_with_new_token) -> torch.Tensor:
        # position_offset is the index of the token about to be predicted (set for this step already), the
        # same however the request was scheduled, split, or evicted and recomputed.
        keys = [mix32(self.seeds[r.state.request_id.split("__child#")[0]] ^ mix32(r.state.position_offset)) >> 1
                for r in requests_with_new_token]
        return torch.tensor(keys, dtype=torch.int32)

    def __call__(self, scores: torch.Tensor, tensor_arg: torch.Tensor) -> torch.Tensor:
        keys = tensor_arg[: scores.size(0)].to(torch.int64)
        vocab = mix32(torch.arange(scores.size(-1), device=scores.device, dtype=torch.int64))
        bits = mix32(keys[:, None] ^ vocab[None, :])
        uniform = ((bits >> 8).to(torch.float32) + 0.5) / 2 ** 24  # 24 bits: exact in float32, never 0 or 1
        choice = (scores.float() - torch.log(-torch.log(uniform))).argmax(dim=-1, keepdim=True)
        return torch.full_like(scores, float("-inf")).scatter_(-1, choice, 0.0)


def _engine_config(requests: list[Request], memory: Memory, seed: int) -> ContinuousBatchingConfig:
    blocks = memory.blocks
    if blocks is None:
        need = sorted((math.ceil((len(r.input_ids) + r.max_new_tokens) / memory.block_size) + 1 for r in requests),
                      reverse=True)
        blocks = sum(need[: memory.concurrency])
    return ContinuousBatchingConfig(
        num_blocks=blocks, page_size=memory.block_size, max_batch_tokens=memory.max_batch_tokens,
        max_memory_percent=memory.fraction, max_requests_per_batch=memory.concurrency, seed=seed,
        # Each request is saved as a whole: prefix sharing would only pay off for repeated prompts.
        allow_block_sharing=False)


def _start_manager(model, requests: list[Request], generation_config, memory: Memory, seed: int):
    """A manager whose cache is allocated and checked against the largest request, not yet started."""
    manager = model.init_continuous_batching(
        generation_config=generation_config, continuous_batching_config=_engine_config(requests, memory, seed),
        workload_hints=WorkloadHints(max_prompt_length=max(len(r.input_ids) for r in requests),
                                     max_generated_length=max(r.max_new_tokens for r in requests),
                                     num_requests=len(requests)))
    if generation_config.do_sample:
        processors = ContinuousBatchingLogitsProcessorList(LogitsProcessorList(
            [*manager.logit_processor.logits_processor, SeededSampling({r.id: r.seed for r in requests})]))
        processors.tensors_required += 1  # the engine counts the tensor arguments only of processors it converts
        manager.logit_processor = processors
    try:
        manager.warmup()  # allocates the paged cache here, so that a misfit is reported before any work
    except MemoryError as err:
        raise UserError(f"generation: the KV cache does not fit in generation.memory_fraction={memory.fraction} of "
                        f"the free device memory ({err}): lower generation.batch_size or set "
                        f"generation.kv_cache_blocks") from err
    capacity = infer_max_single_request_tokens(manager.batch_processor.cache)
    largest = max(requests, key=lambda r: len(r.input_ids) + r.max_new_tokens)
    if len(largest.input_ids) + largest.max_new_tokens > capacity:
        manager.destroy()
        raise UserError(
            f"generation: id {largest.id} needs {len(largest.input_ids)} prompt + {largest.max_new_tokens} new tokens "
            f"but the KV cache holds {capacity} tokens (generation.kv_cache_blocks x generation.kv_block_size): raise "
            f"generation.kv_cache_blocks or lower generation.max_new_tokens")
    return manager


def generate_continuous(model, requests: list[Request], generation_config, memory: Memory, seed: int,
                        on_finish: Callable[[Request, list[int]], None]) -> list[tuple[Request, BaseException]]:
    """Runs `requests` through the manager, calling `on_finish(request, generated_ids)` as each ends (in the
    order they end); returns the requests that failed, with their errors."""
    if not requests:
        return []
    by_id = {r.id: r for r in requests}
    if len(by_id) != len(requests):
        raise UserError("generation: item ids must be unique for continuous batching")
    with torch.inference_mode():  # the engine's thread inherits the caller's inference mode
        manager = _start_manager(model, requests, generation_config, memory, seed)
        for r in requests:  # queued before the loop starts: the first steps see them all, in order
            manager.add_request(r.input_ids, request_id=r.id, max_new_tokens=r.max_new_tokens)
        manager.start()
    failed: list[tuple[Request, BaseException]] = []
    finished = False
    try:
        while by_id:
            result = manager.get_result(timeout=1)
            if result is None:
                if not manager.is_running():
                    break
                continue
            if not result.is_finished():
                continue
            request = by_id.pop(result.request_id)
            if result.error is not None:
                failed.append((request, RuntimeError(result.error)))
            else:
                on_finish(request, result.generated_tokens)
        finished = True
    finally:
        # A failing save or an interrupt must not leave the engine's (non-daemon) thread decoding.
        manager.stop(block=True, hard_stop=not finished)
        manager.destroy()
    fatal = manager.background_thread_status.fatal_error
    failed += [(r, fatal or RuntimeError("the generation loop ended before this request")) for r in by_id.values()]
    return failed
