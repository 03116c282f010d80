"""Generation backends behind one interface, and the resumable driver that runs them.

A backend's `generate(items, save)` calls `save(item, response)` as each response is finished and
returns the items that failed. The driver appends every saved response to a JSONL file at once,
so an interrupted run loses nothing and a rerun generates only what is missing.

- hf:     transformers on CPU or one GPU, the model's chat format: continuous batching (requests
          admitted as others end, lw.eval.continuous) or static batches of `generate`
- vllm:   vLLM offline inference on GPUs, where vLLM imports beside lw (imported only when chosen)
- openai: any OpenAI-compatible server (an API model, `transformers serve`), or `vllm serve` with
          generation.server=vllm: the chat format's token ids and vLLM's own request fields
"""

from __future__ import annotations

import logging
import zlib
from pathlib import Path
from typing import Callable

from tqdm import tqdm

from lw import llm
from lw.errors import SHOWN_FAILURES, Incomplete, UserError
from lw.jsonl import Appender, read_resumable
from lw.models.chat_format import get_chat_format
from lw.models.stops import stop_token_ids, strip_end_of_turn

log = logging.getLogger(__name__)

Save = Callable[[dict, str], None]


def item_seed(seed: int, ids: list[str]) -> int:
    """The sampling seed of a batch (or one item): from the run's seed and the items' ids, not their
    position, so a resumed run samples the remaining items exactly as an uninterrupted one would."""
    return (seed + zlib.crc32("\n".join(ids).encode())) % 2 ** 31


class GenerationFailed(Incomplete):
    """Some generations failed after their retries; the finished ones are saved."""

    def __init__(self, message: str, failed: int, total: int):
        super().__init__(message)
        self.failed, self.total = failed, total


def generate(backend, items: list[dict], out_path: Path) -> list[dict]:
    """Every item with its `response`; what `out_path` already holds is reused, the rest generated."""
    out_path = Path(out_path)
    done = read_resumable(out_path)
    for item in items:
        row = done.get(item["id"])
        if row is not None and row.get("prompt") != item["prompt"]:
            raise UserError(f"{out_path} holds a different prompt for id {item['id']} than the benchmark: "
                             f"it belongs to another benchmark or file version; use another run directory")
    todo = [item for item in items if item["id"] not in done]
    if done:
        log.info("%s: %d predictions already done, %d to go", out_path.name, len(items) - len(todo), len(todo))
    failed: list[tuple[dict, BaseException]] = []
    if todo:
        with Appender(out_path) as out, tqdm(total=len(todo), desc=f"generating ({backend.name})") as bar:
            def save(item: dict, response: str) -> None:
                row = {**item, "response": response}
                out.write(row)
                done[item["id"]] = row
                bar.update()

            failed = backend.generate(todo, save)
    if failed:
        item, error = failed[0]
        raise GenerationFailed(
            f"{len(failed)} of {len(items)} generations failed (first: id {item['id']}: {error}); the "
            f"{len(items) - len(failed)} finished ones are saved in {out_path}: rerun the same command to "
            f"generate only the missing ones", len(failed), len(items))
    return [done[item["id"]] for item in items]


def hf_generation_config(gen_cfg, stop_ids: list[int], pad_token_id: int):
    """The sampling settings and stop ids of both hf paths (static and continuous), in one place. Every
    sampling field is set, so that neither a checkpoint's generation_config.json nor transformers'
    defaults (top_k=50) slip in. No stop ids: every request runs to its max_new_tokens."""
    from transformers import GenerationConfig

    sample = gen_cfg.temperature > 0
    top_k = gen_cfg.get("top_k") or 0
    return GenerationConfig(
        do_sample=sample, temperature=gen_cfg.temperature if sample else None, top_p=gen_cfg.top_p if sample else None,
        top_k=top_k if sample else None, max_new_tokens=gen_cfg.max_new_tokens, pad_token_id=pad_token_id,
        eos_token_id=list(stop_ids) if stop_ids else -1)


class HfBackend:
    """transformers generation in the model's chat format: continuous batching (default) or static
    batches of `batch_size` prompts, left padded (generation.batching)."""

    name = "hf"

    def __init__(self, model, tokenizer, chat_format_name: str, gen_cfg, seed: int = 0, stop_tokens=()):
        import torch

        if torch.cuda.is_available() and model.device.type == "cpu":
            model = model.to("cuda")
        self.model = model.eval()
        self.tokenizer = tokenizer
        self.chat_format = get_chat_format(chat_format_name)
        self.cfg = gen_cfg
        self.seed = seed
        self.stop_ids = stop_token_ids(tokenizer, stop_tokens, self.chat_format, model.generation_config)

    def generation_config(self):
        return hf_generation_config(self.cfg, self.stop_ids, self.tokenizer.pad_token_id)

    @property
    def context_length(self) -> int | None:
        return getattr(self.model.config, "max_position_embeddings", None)

    def prompt_length(self, prompt: str) -> int:
        """The prompt's tokens in the model's chat format."""
        return len(self.chat_format.prompt_ids(self.tokenizer, prompt))

    def _max_new(self, prompt_tokens: int) -> int:
        context = getattr(self.model.config, "max_position_embeddings", None)
        max_new = self.cfg.max_new_tokens if context is None else min(self.cfg.max_new_tokens, context - prompt_tokens)
        if max_new <= 0:
            raise UserError(f"a prompt of {prompt_tokens} tokens leaves no room in the model's context of {context}")
        return max_new

    def answer(self, ids) -> str:
        """The generated ids up to the first stop token, as text without special tokens."""
        ids = ids.tolist() if hasattr(ids, "tolist") else list(ids)
        stops = set(self.stop_ids)
        end = next((i for i, token in enumerate(ids) if token in stops), len(ids))
        return self.tokenizer.decode(ids[:end], skip_special_tokens=True).strip()

    def generate(self, items: list[dict], save: Save) -> list:
        if self.cfg.get("batching", "continuous") == "static":
            return self._generate_static(items, save)
        return self._generate_continuous(items, save)

    def _generate_continuous(self, items: list[dict], save: Save) -> list:
        from lw.eval.continuous import Memory, Request, generate_continuous

        cfg, by_id = self.cfg, {item["id"]: item for item in items}
        requests = []
        for item in items:
            ids = self.chat_format.prompt_ids(self.tokenizer, item["prompt"])
            requests.append(Request(item["id"], ids, self._max_new(len(ids)), item_seed(self.seed, [item["id"]])))
        memory = Memory(concurrency=cfg.batch_size, blocks=cfg.kv_cache_blocks, block_size=cfg.kv_block_size,
                        max_batch_tokens=cfg.max_batch_tokens, fraction=cfg.memory_fraction)

        def finished(request, ids: list[int]) -> None:
            save(by_id[request.id], self.answer(ids))

        failed = generate_continuous(self.model, requests, self.generation_config(), memory, self.seed, finished)
        return [(by_id[request.id], error) for request, error in failed]

    def _generate_static(self, items: list[dict], save: Save) -> list:
        import torch

        tokenizer, model, cfg = self.tokenizer, self.model, self.cfg
        for start in range(0, len(items), cfg.batch_size):
            batch = items[start: start + cfg.batch_size]
            prompts = [self.chat_format.prompt_ids(tokenizer, item["prompt"]) for item in batch]
            width = max(map(len, prompts))
            max_new = self._max_new(width)
            input_ids = torch.full((len(batch), width), tokenizer.pad_token_id)
            attention = torch.zeros((len(batch), width), dtype=torch.long)
            for row, ids in enumerate(prompts):  # left padding
                input_ids[row, width - len(ids):] = torch.tensor(ids)
                attention[row, width - len(ids):] = 1
            config = self.generation_config()
            config.max_new_tokens = max_new
            torch.manual_seed(item_seed(self.seed, [item["id"] for item in batch]))
            with torch.no_grad():
                output = model.generate(input_ids=input_ids.to(model.device), attention_mask=attention.to(model.device),
                                        generation_config=config)
            for item, ids in zip(batch, output[:, width:]):
                save(item, self.answer(ids))
        return []


class VllmBackend:
    """vLLM offline inference on the token ids of our chat format (the format the model was trained on)."""

    name = "vllm"

    def __init__(self, model_path: str, tokenizer, model_cfg, gen_cfg, seed: int = 0):
        try:
            from vllm import LLM, SamplingParams
            from vllm.inputs import TokensPrompt
        except ImportError as err:
            raise UserError("generation=vllm needs vLLM importable beside lw, which no vLLM release allows with "
                            "lw's transformers; serve the model with `vllm serve` in vLLM's own environment and "
                            "use generation=vllm_server (docs/engineering.md, \"vLLM\")") from err
        self.tokenizer = tokenizer
        self.chat_format = get_chat_format(model_cfg.chat_format)
        self.tokens_prompt = TokensPrompt
        self.seed = seed
        self.batch_size = gen_cfg.batch_size
        self.max_model_len = gen_cfg.max_model_len
        overrides = dict(model_cfg.config_overrides)
        self.llm = LLM(model=model_path, tokenizer=model_path, dtype=model_cfg.dtype, seed=seed,
                       trust_remote_code=model_cfg.trust_remote_code,
                       tensor_parallel_size=gen_cfg.tensor_parallel_size,
                       gpu_memory_utilization=gen_cfg.gpu_memory_utilization,
                       max_model_len=gen_cfg.max_model_len, **({"hf_overrides": overrides} if overrides else {}))
        stops = stop_token_ids(tokenizer, model_cfg.stop_tokens, self.chat_format, _generation_config(model_path))
        self.params = SamplingParams(temperature=gen_cfg.temperature, top_p=gen_cfg.top_p,
                                     top_k=gen_cfg.top_k or -1,  # -1: no top-k cut
                                     max_tokens=gen_cfg.max_new_tokens, seed=seed,
                                     stop_token_ids=stops, skip_special_tokens=True)

    @property
    def context_length(self) -> int | None:
        try:
            return self.llm.llm_engine.model_config.max_model_len
        except AttributeError:  # vLLM's engine layout differs between versions
            return self.max_model_len

    def prompt_length(self, prompt: str) -> int:
        return len(self.chat_format.prompt_ids(self.tokenizer, prompt))

    def generate(self, items: list[dict], save: Save) -> list:
        for start in range(0, len(items), self.batch_size):
            batch = items[start: start + self.batch_size]
            prompts = [self.tokens_prompt(prompt_token_ids=self.chat_format.prompt_ids(self.tokenizer, item["prompt"]))
                       for item in batch]
            # One seed per request: vLLM applies a shared seed to each, so k samples of one prompt would be equal.
            params = [self.params.clone() for _ in batch]
            for item, p in zip(batch, params):
                p.seed = item_seed(self.seed, [item["id"]])
            for item, output in zip(batch, self.llm.generate(prompts, params, use_tqdm=False)):
                save(item, output.outputs[0].text.strip())
        return []


def _generation_config(model_path: str):
    """The checkpoint's generation_config.json (its end-of-turn ids), or None where it has none."""
    from transformers import GenerationConfig

    try:
        return GenerationConfig.from_pretrained(model_path)
    except (OSError, ValueError):
        return None


class OpenAIBackend:
    """Completions on an OpenAI-compatible server, `concurrency` requests in flight.

    generation.server=openai (any such server: an API model, `transformers serve`): chat completions;
    the server renders the prompt with the served model's chat template and stops on its
    generation_config's end-of-turn ids (lw saves both with every trained model). Sent beyond the
    prompt: temperature, top_p, max_tokens; `top_k` when generation.top_k is set (vLLM and transformers
    serve accept it; the OpenAI API refuses it: use sampling=lw there); `stop` when generation.stop lists
    strings.

    generation.server=vllm (`vllm serve`, in an environment of its own; docs/engineering.md): the prompt
    as the token ids of model.chat_format (POST /completions), so the served model reads exactly what
    generation=hf and generation=vllm give it, with vLLM's own request fields: `top_k` (-1: no cut),
    each item's `seed` (as the other backends seed each item) and `stop_token_ids` (lw.models.stops).
    A trailing end-of-turn marker in an answer (model.stop_tokens, generation.stop) is stripped."""

    name = "openai"

    def __init__(self, gen_cfg, end_markers=(), seed: int = 0, served=None):
        if not gen_cfg.model:
            raise UserError("generation=openai needs generation.model (the served model's name)")
        self.cfg = gen_cfg
        self.seed = seed
        self.served = served  # server=vllm: (chat format, tokenizer, stop ids)
        self.end_markers = [*end_markers, *gen_cfg.stop]
        # A missing key or URL fails here, before any request.
        self.endpoint = llm.Endpoint(gen_cfg.base_url, gen_cfg.api_key_env, gen_cfg.timeout, gen_cfg.retries,
                                     "generation")

    async def request(self, client, item: dict) -> str:
        cfg = self.cfg
        sampling = {"temperature": cfg.temperature, "top_p": cfg.top_p, "max_tokens": cfg.max_new_tokens,
                    "stop": list(cfg.stop) or None}
        if self.served is None:
            return await llm.chat(client, self.endpoint, cfg.model, item["prompt"], top_k=cfg.top_k, **sampling)
        chat_format, tokenizer, stops = self.served
        return await llm.complete_ids(client, self.endpoint, cfg.model, chat_format.prompt_ids(tokenizer, item["prompt"]),
                                      top_k=cfg.top_k if cfg.top_k is not None else -1,
                                      seed=item_seed(self.seed, [item["id"]]), stop_token_ids=stops,
                                      skip_special_tokens=True, **sampling)

    def generate(self, items: list[dict], save: Save) -> list:
        failed: list = []
        self.endpoint.check_reachable()

        def on_error(item, error):
            failed.append((item, error))
            if len(failed) <= SHOWN_FAILURES:
                log.warning("generation failed for id %s: %s%s", item["id"], error,
                            "; further failures are counted, not shown" if len(failed) == SHOWN_FAILURES else "")

        llm.run_bounded(items, self.request, self.cfg.concurrency,
                        lambda item, text: save(item, strip_end_of_turn(text, self.end_markers)), on_error)
        return failed


def served_prompts(cfg, model_path: str | None):
    """generation.server=vllm: the chat format, tokenizer and stop ids of the served checkpoint."""
    from lw.models import build_tokenizer

    if model_path is None:
        raise UserError("generation.server=vllm sends the prompt as token ids: set model.path to the checkpoint "
                        "`vllm serve` serves (its tokenizer), or generation.server=openai for chat completions")
    tokenizer = build_tokenizer(cfg.model, cfg.cache_dir, path=model_path)
    chat_format = get_chat_format(cfg.model.chat_format)
    stops = stop_token_ids(tokenizer, cfg.model.stop_tokens, chat_format,
                           _generation_config(tokenizer.name_or_path or model_path))
    return chat_format, tokenizer, stops


def build_backend(cfg, model_path: str | None):
    """The configured backend; hf and vllm load `model_path` (a checkpoint or hub id)."""
    backend = cfg.generation.backend
    if backend == "openai":
        server = cfg.generation.server
        served = served_prompts(cfg, model_path) if server == "vllm" else None
        return OpenAIBackend(cfg.generation, end_markers=cfg.model.stop_tokens, seed=cfg.seed, served=served)
    from lw.models import build_model, build_tokenizer

    tokenizer = build_tokenizer(cfg.model, cfg.cache_dir, path=model_path)
    if backend == "vllm":
        if model_path is None:
            raise UserError("generation=vllm needs a model path (model.path or a trained checkpoint)")
        from lw.models.chatglm import native_checkpoint

        return VllmBackend(native_checkpoint(model_path, cfg.cache_dir), tokenizer, cfg.model, cfg.generation,
                           seed=cfg.seed)
    model = build_model(cfg.model, tokenizer, path=model_path, seed=cfg.seed, cache_dir=cfg.cache_dir)
    return HfBackend(model, tokenizer, cfg.model.chat_format, cfg.generation, seed=cfg.seed,
                     stop_tokens=cfg.model.stop_tokens)
