"""A real HTTP server on 127.0.0.1 speaking OpenAI's POST /v1/chat/completions (and /v1/completions, a
prompt of token ids as vLLM's server takes it), with scripted replies.

The project's tests and benchmarks/judge_concurrency.py give it a function from (request body,
attempt number for that same request) to a Reply; it records every request it receives. A Reply
may add response headers (Retry-After on a 429), drop the connection unanswered or cut it mid-body; completions carry
a `usage` that counts whitespace-separated words of the prompt and of the answer as tokens.
"""

from __future__ import annotations

import json
import multiprocessing
import socket
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Callable


@dataclass
class Reply:
    content: str = ""
    status: int = 200
    delay: float = 0.0  # seconds before answering
    body: str | None = None  # raw body instead of a completion (e.g. an error message)
    headers: dict = field(default_factory=dict)  # extra response headers (e.g. {"Retry-After": "1"} on a 429)
    drop: bool = False  # close the connection without answering (a dropped connection)
    cut: bool = False  # send the headers and half the body, then close (a connection dropped mid-body)


class _Server(ThreadingHTTPServer):
    # The default backlog of 5 drops connections beyond it when a client opens 16 at once, and a
    # dropped SYN costs the client a second before it tries again.
    request_queue_size = 128


class OpenAIServer:
    """`with OpenAIServer(script) as server:` serves on server.base_url until the block ends."""

    def __init__(self, script: Callable[[dict, int], Reply]):
        self.script = script
        self.requests: list[dict] = []  # {"body", "headers" (lower-case names), "attempt"} of every request
        self._attempts: dict[str, int] = {}
        self._lock = threading.Lock()
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):  # noqa: N802 (http.server's naming)
                body = json.loads(self.rfile.read(int(self.headers.get("Content-Length", 0))))
                route = self.path.rstrip("/")
                if route not in ("/v1/chat/completions", "/v1/completions"):
                    return self._send(404, json.dumps({"error": {"message": f"no route {self.path}"}}))
                key = json.dumps(body.get("messages", body.get("prompt")), sort_keys=True)
                with server._lock:
                    attempt = server._attempts[key] = server._attempts.get(key, 0) + 1
                    server.requests.append({"body": body, "headers": {k.lower(): v for k, v in self.headers.items()}, "attempt": attempt})
                reply = server.script(body, attempt)
                time.sleep(reply.delay)
                if reply.drop:
                    self.close_connection = True
                    try:
                        self.connection.shutdown(socket.SHUT_RDWR)
                    except OSError:
                        pass
                    return
                if reply.body is not None or reply.status != 200:
                    text = reply.body if reply.body is not None else json.dumps(
                        {"error": {"message": f"scripted {reply.status}", "type": "scripted"}})
                    return self._send(reply.status, text, reply.headers)
                answer = (completion(body["model"], reply.content, user_text(body)) if "messages" in body
                          else text_completion(body["model"], reply.content, len(body["prompt"])))
                self._send(200, json.dumps(answer), reply.headers, cut=reply.cut)

            def _send(self, status, text, headers=None, cut=False):
                data = text.encode()
                try:
                    self.send_response(status)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(data)))
                    for name, value in (headers or {}).items():
                        self.send_header(name, str(value))
                    self.end_headers()
                    self.wfile.write(data[: len(data) // 2] if cut else data)
                    if cut:
                        self.wfile.flush()
                        self.close_connection = True
                        self.connection.shutdown(socket.SHUT_RDWR)
                except (BrokenPipeError, ConnectionResetError):
                    pass  # the client gave up (a scripted timeout)

            def log_message(self, *args):
                pass

        self.httpd = _Server(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.base_url = f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"
        self._thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    def __enter__(self) -> "OpenAIServer":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
        self._thread.join()

    def count(self) -> int:
        with self._lock:
            return len(self.requests)


def _serve(script, urls, stop) -> None:
    with OpenAIServer(script) as server:
        urls.put(server.base_url)
        stop.wait()


@contextmanager
def spawned_server(script: Callable[[dict, int], Reply]):
    """`with spawned_server(script) as base_url:` the server in a process of its own, as a remote
    server would be, so its threads take no time from the client's interpreter (benchmarks). The
    script must be picklable: a module-level function, or a functools.partial of one."""
    context = multiprocessing.get_context("spawn")
    urls, stop = context.Queue(), context.Event()
    process = context.Process(target=_serve, args=(script, urls, stop), daemon=True)
    process.start()
    try:
        yield urls.get(timeout=120)
    finally:
        stop.set()
        process.join(timeout=10)


def text_completion(model: str, content: str, prompt_tokens: int) -> dict:
    """A completion (POST /v1/completions, a prompt of token ids): vLLM's answer to a prompt given as ids."""
    return {"id": "cmpl-test", "object": "text_completion", "created": int(time.time()), "model": model,
            "choices": [{"index": 0, "text": content, "finish_reason": "stop"}],
            "usage": {"prompt_tokens": prompt_tokens, "completion_tokens": max(1, len(content.split())),
                      "total_tokens": prompt_tokens + max(1, len(content.split()))}}


def completion(model: str, content: str, prompt: str = "") -> dict:
    """A chat completion whose usage counts whitespace-separated words as tokens (at least 1)."""
    prompt_tokens, completion_tokens = max(1, len(prompt.split())), max(1, len(content.split()))
    return {
        "id": "chatcmpl-test", "object": "chat.completion", "created": int(time.time()), "model": model,
        "choices": [{"index": 0, "message": {"role": "assistant", "content": content}, "finish_reason": "stop"}],
        "usage": {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
                  "total_tokens": prompt_tokens + completion_tokens},
    }


def user_text(body: dict) -> str:
    return body["messages"][-1]["content"]


def judge_json(scores: dict[str, int] | int = 4, analysis: str = "fine") -> str:
    """A reply in judge.txt's format; an int gives every dimension that score."""
    from lw.eval.judge import DIMENSIONS

    if isinstance(scores, int):
        scores = {d: scores for d in DIMENSIONS}
    return json.dumps({"Analysis": analysis, **scores})
