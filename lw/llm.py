"""Chat completions on any OpenAI-compatible server (POST {base_url}/chat/completions), many at once.

aiohttp does the HTTP; this module adds what a long run needs:
- bounded concurrency, and each result handed to the caller as it finishes, so it can be appended
  to disk at once;
- retries with exponential backoff and jitter on 408/409/429/5xx, timeouts and dropped connections,
  honouring Retry-After;
- failing fast: a server that refuses every connection before its first answer, or a status no
  retry can fix (400, 401, 403, 404, 422 before any answer; 401, 403, 404 at any time), stops the
  whole run at once with one line naming the URL, the status, the server's message and the setting
  to change (ServerUnusable, a user error);
- giving up on a server that stopped answering: after `give_up_after` seconds in which every
  connection was refused, the requests still to send fail at once instead of one by one.
The openai SDK does the retries too but spends about 4x more CPU per request, which cost half the
concurrency gain on a busy 2-core machine (benchmarks/judge_concurrency.py).
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import random
import time
from dataclasses import dataclass
from typing import Any, Awaitable, Callable, Iterable

from lw.errors import UserError

log = logging.getLogger(__name__)

RETRY_STATUS = {408, 409, 429}  # and every 5xx
ALWAYS_FATAL_STATUS = {401, 403, 404}  # the key or the URL is wrong for every request
FATAL_BEFORE_ANSWER_STATUS = {400, 422}  # before any answer: the model name or a setting; later: that one request
BACKOFF_START, BACKOFF_MAX, RETRY_AFTER_MAX = 0.5, 60.0, 120.0  # seconds
CONNECT_TIMEOUT = 10.0  # seconds to open a connection, whatever the request's own timeout
STARTUP_REFUSALS = 3  # refused connections before the first answer that stop a run
GIVE_UP_AFTER = 60.0  # seconds of nothing but refused connections after which a run stops sending


class ApiError(RuntimeError):
    """A request that failed for good: after its retries, or at once when no retry can help."""

    def __init__(self, message: str, status: int | None = None):
        super().__init__(message)
        self.status = status


class ServerUnusable(UserError):
    """The endpoint cannot serve this run (unreachable, wrong URL, key or model): the run stops."""


def api_key(api_key_env: str | None, what: str) -> str | None:
    """The key from the environment variable NAMED by the config; never the key itself."""
    if not api_key_env:
        return None
    key = os.environ.get(api_key_env)
    if not key:
        raise UserError(f"{what}.api_key_env names {api_key_env}, which is not set in the environment; "
                        f"export it, or set {what}.api_key_env=null for a server without keys")
    return key


@dataclass
class Endpoint:
    base_url: str
    api_key_env: str | None
    timeout: float  # seconds per request
    retries: int
    what: str  # the config node, for messages ("judge", "generation")

    def __post_init__(self):
        if not self.base_url:
            raise UserError(f"{self.what}.base_url is not set (e.g. https://api.openai.com/v1 or http://HOST:PORT/v1)")
        self.url = self.base_url.rstrip("/") + "/chat/completions"
        key = api_key(self.api_key_env, self.what)
        self.headers = {"Authorization": f"Bearer {key}"} if key else {}

    def check_reachable(self) -> None:
        """Fail at once, before a long job, if nothing accepts connections at base_url (a wrong host or
        port, a server not started); what the server answers is judged by the first requests."""
        import socket
        from urllib.parse import urlsplit

        parts = urlsplit(self.url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise UserError(f"{self.what}.base_url={self.base_url!r} is not an http(s) URL (e.g. http://HOST:PORT/v1)")
        port = parts.port or (443 if parts.scheme == "https" else 80)
        try:
            socket.create_connection((parts.hostname, port), timeout=min(CONNECT_TIMEOUT, self.timeout)).close()
        except socket.gaierror:
            problem = f"cannot resolve the host {parts.hostname}"
        except ConnectionRefusedError:
            problem = f"connection refused by {parts.hostname}:{port}"
        except (TimeoutError, socket.timeout):
            problem = f"could not connect to {parts.hostname}:{port} within {min(CONNECT_TIMEOUT, self.timeout):g} s"
        except OSError as err:
            problem = f"cannot connect to {parts.hostname}:{port} ({err.strerror or err})"
        else:
            return
        raise ServerUnusable(f"{self.what}: {self.url}: {problem}; start the server or fix {self.what}.base_url "
                             f"(host, port, http or https)")

    def hint(self, status: int) -> str:
        """What to change for a status no retry can fix."""
        if status == 404:
            return (f"check {self.what}.base_url (OpenAI-compatible servers answer under /v1, "
                    f"e.g. http://HOST:PORT/v1) and {self.what}.model")
        if status in (401, 403):
            if self.api_key_env:
                return f"the server refused the key in ${self.api_key_env} ({self.what}.api_key_env): check it"
            return (f"the server wants a key: export it and name its variable in {self.what}.api_key_env "
                    f"(e.g. {self.what}.api_key_env=OPENAI_API_KEY)")
        return (f"the server refused the request: check {self.what}.model (the name the server serves) "
                f"and the sampling settings ({self.what}.*)")


class Health:
    """What one batch of requests has seen of its server, shared by all of them."""

    def __init__(self):
        self.answers = 0  # HTTP responses of any status: the server is there
        self.refusals = 0  # connections refused (or unresolvable, or not opened in time) since the last answer
        self.refused_since: float | None = None

    def answered(self) -> None:
        self.answers += 1
        self.refusals, self.refused_since = 0, None

    def refused(self) -> None:
        self.refusals += 1
        self.refused_since = self.refused_since or time.monotonic()

    def gone(self) -> bool:
        return self.refused_since is not None and time.monotonic() - self.refused_since >= GIVE_UP_AFTER


@dataclass
class Client:
    """The aiohttp session of a batch and its server's health; `work` functions pass it to chat()."""

    session: Any
    health: Health


def backoff(attempt: int, retry_after: float | None) -> float:
    if retry_after is not None and 0 < retry_after <= RETRY_AFTER_MAX:
        return retry_after
    return min(BACKOFF_START * 2 ** attempt, BACKOFF_MAX) * (1 - 0.25 * random.random())


def _retry_after(headers) -> float | None:
    try:
        return float(headers.get("Retry-After", ""))
    except ValueError:
        return None


def server_message(body: str) -> str:
    """The server's own words from an error body: OpenAI's {"error": {"message"}}, else the text."""
    try:
        data = json.loads(body)
        error = data.get("error", data) if isinstance(data, dict) else data
        message = error.get("message") or error.get("detail") if isinstance(error, dict) else None
        if isinstance(data, dict) and not message:
            message = data.get("detail") or data.get("message")
        if message:
            return str(message)[:300]
    except (ValueError, AttributeError):
        pass
    return " ".join(body.split())[:300] or "(empty body)"


def transport_failure(err: BaseException, endpoint: Endpoint) -> tuple[str, bool]:
    """What went wrong with a request that got no HTTP answer, and whether the server was unreachable."""
    import aiohttp

    host = endpoint.url.split("://", 1)[-1].split("/", 1)[0]
    if isinstance(err, aiohttp.ClientConnectorDNSError):
        return f"cannot resolve the host {host.rsplit(':', 1)[0]}", True
    if isinstance(err, aiohttp.ConnectionTimeoutError):
        return f"could not connect to {host} within {min(CONNECT_TIMEOUT, endpoint.timeout):g} s", True
    if isinstance(err, aiohttp.ClientConnectorError):
        refused = isinstance(err.os_error, ConnectionRefusedError)
        return (f"connection refused by {host}" if refused else f"cannot connect to {host} ({err.os_error})"), True
    if isinstance(err, (asyncio.TimeoutError, aiohttp.ServerTimeoutError)):
        return f"no answer within {endpoint.timeout:g} s ({endpoint.what}.timeout)", False
    if isinstance(err, (aiohttp.ServerDisconnectedError, aiohttp.ClientPayloadError, aiohttp.ClientOSError)):
        return f"the connection dropped before the answer was complete ({type(err).__name__})", False
    return f"{type(err).__name__}: {err}", False


async def chat(client: Client, endpoint: Endpoint, model: str, prompt: str, system: str | None = None,
               **sampling) -> str:
    """One user turn (after a system turn, when given) -> the assistant's text ("" when the server
    returns no content)."""
    text, _ = await chat_with_usage(client, endpoint, model, prompt, system=system, **sampling)
    return text


def usage_of(data: dict) -> dict:
    """{"prompt_tokens", "completion_tokens"} from a completion's `usage` (0 where the server gives none)."""
    usage = data.get("usage") if isinstance(data, dict) else None
    usage = usage if isinstance(usage, dict) else {}
    return {k: int(usage.get(k) or 0) for k in ("prompt_tokens", "completion_tokens")}


async def chat_with_usage(client: Client, endpoint: Endpoint, model: str, prompt: str, system: str | None = None,
                          **sampling) -> tuple[str, dict]:
    """As `chat`, and the token usage the server reported: (text, {"prompt_tokens", "completion_tokens"})."""
    turns = ([{"role": "system", "content": system}] if system is not None else []) + [{"role": "user", "content": prompt}]
    payload = {"model": model, "messages": turns,
               **{k: v for k, v in sampling.items() if v is not None}}
    return await _post(client, endpoint, endpoint.url, payload, lambda choice: choice["message"].get("content"))


async def complete_ids(client: Client, endpoint: Endpoint, model: str, prompt_ids: list[int], **sampling) -> str:
    """A completion of the prompt's token ids (POST /completions): the text the server generated.
    vLLM's server takes a prompt as ids, so it generates from exactly the ids lw's chat format gives."""
    payload = {"model": model, "prompt": list(prompt_ids), **{k: v for k, v in sampling.items() if v is not None}}
    text, _ = await _post(client, endpoint, endpoint.base_url.rstrip("/") + "/completions", payload,
                          lambda choice: choice["text"])
    return text


async def _post(client: Client, endpoint: Endpoint, url: str, payload: dict, read) -> tuple[str, dict]:
    """POST `payload` with retries; `read(first choice)` is the text (None: "")."""
    import aiohttp

    timeout = aiohttp.ClientTimeout(total=endpoint.timeout, sock_connect=min(CONNECT_TIMEOUT, endpoint.timeout))
    health = client.health
    where = f"{endpoint.what}: {url}"
    for attempt in range(endpoint.retries + 1):
        if health.gone():
            raise ApiError(f"{where}: not sent, the server has refused every connection for "
                           f"{GIVE_UP_AFTER:g} s (it stopped?)")
        retry_after = None
        try:
            async with client.session.post(url, json=payload, headers=endpoint.headers,
                                           timeout=timeout) as response:
                status = response.status
                if status == 200:
                    data = await response.json(content_type=None)
                    health.answered()
                    try:
                        return read(data["choices"][0]) or "", usage_of(data)
                    except (KeyError, IndexError, TypeError):
                        raise ApiError(f"{where}: not a completion: {str(data)[:300]}", 200) from None
                message = server_message(await response.text())
                retry_after = _retry_after(response.headers)
                first_answer = health.answers == 0
                health.answered()
        except (asyncio.TimeoutError, aiohttp.ClientError) as err:
            problem, unreachable = transport_failure(err, endpoint)
            error = ApiError(f"{where}: {problem}")
            if unreachable:
                health.refused()
                if health.answers == 0 and health.refusals >= STARTUP_REFUSALS:
                    raise ServerUnusable(f"{where}: {problem}; start the server or fix {endpoint.what}.base_url "
                                         f"(host, port, http or https)") from None
        else:
            error = ApiError(f"{where}: HTTP {status}: {message}", status)
            if status in ALWAYS_FATAL_STATUS or (status in FATAL_BEFORE_ANSWER_STATUS and first_answer):
                raise ServerUnusable(f"{error}; {endpoint.hint(status)}")
            if status not in RETRY_STATUS and status < 500:
                raise ApiError(f"{error} (not retried: the same request would fail again)", status)
        if attempt == endpoint.retries:
            raise ApiError(f"{error} (after {endpoint.retries} retries; {endpoint.what}.retries)", error.status)
        delay = backoff(attempt, retry_after)
        log.debug("%s; retrying in %.1f s", error, delay)
        await asyncio.sleep(delay)
    raise AssertionError("unreachable")


def run_bounded(jobs: Iterable[Any], work: Callable[[Client, Any], Awaitable[Any]], concurrency: int,
                on_result: Callable[[Any, Any], None], on_error: Callable[[Any, BaseException], None]) -> None:
    """Run `work(client, job)` for every job, at most `concurrency` at a time; results and errors as they come.

    A job that still fails after its retries goes to on_error and the others carry on; a
    ServerUnusable stops them all and is raised (what finished before it was handed over).
    """
    import aiohttp

    if concurrency < 1:
        raise UserError(f"concurrency must be at least 1, got {concurrency}")

    async def main() -> None:
        semaphore = asyncio.Semaphore(concurrency)
        # The session belongs to this event loop; limit=0: the semaphore bounds the connections.
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as session:
            client = Client(session, Health())

            async def one(job):
                async with semaphore:
                    try:
                        return job, await work(client, job), None
                    except ServerUnusable:
                        raise
                    except Exception as err:  # noqa: BLE001 (reported per job, the run goes on)
                        return job, None, err

            tasks = [asyncio.ensure_future(one(job)) for job in jobs]
            try:
                for next_done in asyncio.as_completed(tasks):
                    job, result, error = await next_done
                    if error is None:
                        on_result(job, result)
                    else:
                        on_error(job, error)
            finally:
                for task in tasks:
                    task.cancel()
                await asyncio.gather(*tasks, return_exceptions=True)

    asyncio.run(main())
