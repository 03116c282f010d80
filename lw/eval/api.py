"""Chat completions on any OpenAI-compatible server, many at once.

The openai client does the transport retries (429, 408/409, 5xx, timeouts, connection errors) with
exponential backoff and jitter, honouring Retry-After; this module bounds the concurrency and hands
each result to the caller as it finishes, so callers can append it to disk at once.
"""

from __future__ import annotations

import asyncio
import logging
import os
from typing import Any, Awaitable, Callable, Iterable

log = logging.getLogger(__name__)
for _name in ("httpx", "httpx2"):  # one INFO line per request would bury the run's log
    logging.getLogger(_name).setLevel(logging.WARNING)

NO_KEY = "no-key"  # servers without authentication (a local vLLM) still need a non-empty key


def api_key(api_key_env: str | None, what: str) -> str:
    """The key from the environment variable NAMED by the config; never the key itself."""
    if not api_key_env:
        return NO_KEY
    key = os.environ.get(api_key_env)
    if not key:
        raise ValueError(f"{what}.api_key_env names {api_key_env}, which is not set in the environment; "
                         f"export it, or set {what}.api_key_env=null for a server without keys")
    return key


def make_client(base_url: str | None, api_key_env: str | None, timeout: float, retries: int, what: str):
    from openai import AsyncOpenAI

    if not base_url:
        raise ValueError(f"{what}.base_url is not set (e.g. https://api.openai.com/v1 or http://HOST:PORT/v1)")
    # An explicit key: the client would otherwise pick up OPENAI_API_KEY and send it to any base_url.
    return AsyncOpenAI(base_url=base_url, api_key=api_key(api_key_env, what), timeout=timeout,
                       max_retries=retries)


async def chat(client, model: str, prompt: str, **sampling) -> str:
    """One user turn -> the assistant's text ("" when the server returns no content)."""
    sampling = {k: v for k, v in sampling.items() if v is not None}
    completion = await client.chat.completions.create(
        model=model, messages=[{"role": "user", "content": prompt}], **sampling)
    if not completion.choices:
        raise ValueError(f"the server returned no choices: {completion!r}"[:300])
    return completion.choices[0].message.content or ""


def run_bounded(jobs: Iterable[Any], work: Callable[[Any, Any], Awaitable[Any]], concurrency: int,
                on_result: Callable[[Any, Any], None], on_error: Callable[[Any, BaseException], None],
                client_factory: Callable[[], Any]) -> None:
    """Run `work(client, job)` for every job, at most `concurrency` at a time; results and errors as they come.

    A job that still fails after the client's retries goes to on_error; the others carry on. The
    client is made inside the event loop: its connection pool belongs to that loop.
    """
    if concurrency < 1:
        raise ValueError(f"concurrency must be at least 1, got {concurrency}")

    async def main() -> None:
        semaphore = asyncio.Semaphore(concurrency)
        async with client_factory() as client:

            async def one(job):
                async with semaphore:
                    try:
                        return job, await work(client, job), None
                    except Exception as err:  # noqa: BLE001 (reported per job, the run goes on)
                        return job, None, err

            for next_done in asyncio.as_completed([one(job) for job in jobs]):
                job, result, error = await next_done
                if error is None:
                    on_result(job, result)
                else:
                    on_error(job, error)

    asyncio.run(main())
