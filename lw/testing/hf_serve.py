"""`transformers serve` on loopback: a real OpenAI-compatible server that no one here wrote, serving
a local model directory, for the tests and the CPU demos (no network, no GPU).

    with transformers_serve(model_dir) as base_url:   # http://127.0.0.1:PORT/v1
        ...                                             # the model's name is str(model_dir)

The server renders prompts with the directory's chat template (lw saves one with every trained
model), answers one request at a time, and needs the `serving` extra of transformers (the project's
dev extra has it).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
import urllib.request
from contextlib import contextmanager
from pathlib import Path

from lw.launch.topology import free_port


@contextmanager
def transformers_serve(model_dir: str | Path, log_path: str | Path | None = None, start_timeout: float = 120.0):
    """Start `transformers serve MODEL_DIR` on a free loopback port; yield its base URL; stop it."""
    command = shutil.which("transformers", path=os.path.dirname(sys.executable)) or shutil.which("transformers")
    if command is None:
        raise RuntimeError("`transformers serve` is not installed: pip install 'transformers[serving]'")
    port = free_port()
    # One thread: the server shares two cores with its client (10x faster than the default there).
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    log = open(log_path, "w") if log_path else subprocess.DEVNULL
    process = subprocess.Popen([command, "serve", str(model_dir), "--host", "127.0.0.1", "--port", str(port),
                                "--device", "cpu"], env=env, stdout=log, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + start_timeout
        while True:
            if process.poll() is not None:
                raise RuntimeError(f"transformers serve exited with code {process.returncode} before it was ready"
                                   + (f"; its log: {log_path}" if log_path else ""))
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2) as response:
                    if response.status == 200:
                        break
            except OSError:
                pass
            if time.monotonic() > deadline:
                raise TimeoutError(f"transformers serve was not ready after {start_timeout:.0f} s")
            time.sleep(0.5)
        yield f"http://127.0.0.1:{port}/v1"
    finally:
        process.terminate()
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        if log_path:
            log.close()
