"""Fixtures and hooks; the helpers tests import are in helpers.py."""

import os
import threading
from functools import partial
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from lw.testing.benchmark_files import write_benchmark_files

# Light modules: nothing that reads HF_HOME or the W&B settings is imported before the fixture sets them.
from helpers import find_official_dir, find_writingbench_dir, official_dirs, save_tiny_checkpoint, writingbench_dirs


@pytest.fixture(autouse=True, scope="session")
def _offline_environment(tmp_path_factory):
    """No test reaches the network or writes outside its temporary folders."""
    home = tmp_path_factory.mktemp("home")
    os.environ.update({
        "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1",
        "WANDB_DIR": str(home / "wandb"), "WANDB_CACHE_DIR": str(home / "wandb-cache"),
        "WANDB_CONFIG_DIR": str(home / "wandb-config"), "WANDB_DATA_DIR": str(home / "wandb-data"),
        "HF_HOME": str(home / "hf"), "MPLCONFIGDIR": str(home / "mpl"),
        "LW_CACHE": os.environ.get("LW_TEST_CACHE", str(home / "lw-cache")),
        # Benchmark downloads go to a loopback port nothing listens on, never to GitHub.
        "LW_BENCHMARK_URL": "http://127.0.0.1:9/no-downloads-in-tests",
    })
    for key in ("WANDB_API_KEY", "WANDB_MODE", "OPENAI_API_KEY"):
        os.environ.pop(key, None)
    yield


@pytest.fixture(scope="session")
def official_bench_dir() -> Path:
    """The folder of the official LongWriter benchmark files, for the checks meaningful only on them
    (their pinned SHA-256, their own prompts); the test is skipped when no folder has them."""
    found = find_official_dir()
    if found is None:
        pytest.skip("official LongWriter benchmark files not found (set LW_BENCH_DIR, or put them in "
                    + " or ".join(str(d) for d in official_dirs()) + ")")
    return found


@pytest.fixture(scope="session")
def official_writingbench_dir() -> Path:
    """The folder of WritingBench's length-subset files at the pinned commit; skipped when none has them."""
    found = find_writingbench_dir()
    if found is None:
        pytest.skip("WritingBench's length-subset files not found (set LW_WRITINGBENCH_DIR, or put them in "
                    + " or ".join(str(d) for d in writingbench_dirs()) + ")")
    return found


@pytest.fixture(scope="session")
def bench_data_dir(tmp_path_factory) -> Path:
    """Benchmark-shaped files (lw.testing.benchmark_files) for `eval.<benchmark>.data_dir`: the
    official schema and counts, written by the test session itself."""
    return write_benchmark_files(tmp_path_factory.mktemp("benchmarks"))


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory) -> Path:
    return save_tiny_checkpoint(tmp_path_factory.mktemp("tiny") / "model")


@pytest.fixture
def file_server(tmp_path):
    """A real HTTP server on loopback serving tmp_path/www, counting GETs."""
    www = tmp_path / "www"
    www.mkdir()
    hits = []

    class Handler(SimpleHTTPRequestHandler):
        def do_GET(self):  # noqa: N802
            hits.append(self.path)
            super().do_GET()

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), partial(Handler, directory=str(www)))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}", www, hits
    server.shutdown()
    server.server_close()
