"""Benchmark files: the official ones as docs/science.md describes them, bad lines named, downloads checked."""

import hashlib
import json
import threading
from collections import Counter
from functools import partial
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer

import pytest
from omegaconf import OmegaConf

from conftest import SHARED_DATA
from lw.config import BenchmarkConfig
from lw.eval.benchmarks import (OFFICIAL_FILES, benchmark_file, download, judge_template, load_items,
                                read_benchmark_jsonl)


def bench(kind, **kw):
    return OmegaConf.structured(BenchmarkConfig(kind=kind, data_dir=str(SHARED_DATA), **kw))


def test_longbench_write_has_the_papers_subsets():
    items = load_items(bench("longbench_write"), cache_dir="unused")
    assert len(items) == 120 and len({i["prompt"] for i in items}) == 120
    assert Counter(i["subset"] for i in items) == {"0-500": 26, "500-2000": 36, "2000-4000": 31, "4000-20000": 27}
    assert {i["language"] for i in items} == {"en", "zh"}
    english = load_items(bench("longbench_write", file="longbench_write_en.jsonl"), cache_dir="unused")
    # One "English" prompt is written in Chinese (it asks for an English article): language follows the prompt.
    assert len(english) == 60 and Counter(i["language"] for i in english) == {"en": 59, "zh": 1}


def test_longwrite_ruler_is_8_instructions_by_6_lengths():
    items = load_items(bench("longwrite_ruler"), cache_dir="unused")
    assert len(items) == 48
    assert Counter(i["length"] for i in items) == {n: 8 for n in (1000, 2000, 5000, 10000, 20000, 30000)}
    assert Counter(i["language"] for i in items) == {"en": 24, "zh": 24}
    assert "subset" not in items[0]
    assert len(load_items(bench("longwrite_ruler", limit=5), cache_dir="unused")) == 5


def test_the_shared_files_are_the_pinned_official_ones():
    for name, digest in OFFICIAL_FILES.items():
        assert hashlib.sha256((SHARED_DATA / name).read_bytes()).hexdigest() == digest, name
    template = judge_template(bench("longbench_write"), cache_dir="unused")
    assert "$INST$" in template and "Reading Experience" in template


@pytest.mark.parametrize("line, message", [
    ('{"prompt": "b", "type": "x"}', "bad.jsonl:2: missing field 'length'"),
    ('{"length": 100}', "bad.jsonl:2: missing field 'prompt'"),
    ('{"prompt": "b", "length": "many"}', "bad.jsonl:2: field 'length' must be a positive integer, got 'many'"),
    ('{"prompt": "b", "length": 12.5}', "bad.jsonl:2: field 'length' must be a positive integer, got 12.5"),
    ('{"prompt": "b", "length": 0}', "bad.jsonl:2: field 'length' must be a positive integer"),
    ('{"prompt": "a", "length": 100}', "bad.jsonl:2: duplicate prompt (first at line 1)"),
    ('{"prompt": "b", "length": 100', "bad.jsonl:2: not valid JSON"),
])
def test_bad_lines_fail_naming_file_line_and_field(tmp_path, line, message):
    path = tmp_path / "bad.jsonl"
    path.write_text('{"prompt": "a", "length": 100}\n' + line + "\n")
    with pytest.raises(ValueError) as err:
        read_benchmark_jsonl(path)
    assert message in str(err.value)


def test_integral_lengths_written_as_text_or_float_are_accepted(tmp_path):
    path = tmp_path / "ok.jsonl"
    path.write_text('{"prompt": "a", "length": "100"}\n\n{"prompt": "b", "length": 200.0}\n')
    assert [i["length"] for i in read_benchmark_jsonl(path)] == [100, 200]


def test_missing_data_dir_file_is_named(tmp_path):
    with pytest.raises(FileNotFoundError, match="longwrite_ruler.jsonl"):
        benchmark_file(OmegaConf.structured(BenchmarkConfig(kind="longwrite_ruler", data_dir=str(tmp_path))),
                       "longwrite_ruler.jsonl", "unused")


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


def test_download_once_checked_and_atomic(tmp_path, file_server):
    url, www, hits = file_server
    data = (SHARED_DATA / "longwrite_ruler.jsonl").read_bytes()
    (www / "ruler.jsonl").write_bytes(data)
    dest = tmp_path / "cache" / "ruler.jsonl"
    with pytest.raises(ValueError, match="SHA-256"):
        download(f"{url}/ruler.jsonl", dest, sha256="0" * 64)
    assert not dest.exists() and not list(dest.parent.glob("*.tmp"))  # nothing half-written is left
    digest = OFFICIAL_FILES["longwrite_ruler.jsonl"]
    assert download(f"{url}/ruler.jsonl", dest, sha256=digest).read_bytes() == data
    assert download(f"{url}/ruler.jsonl", dest, sha256=digest) == dest
    assert hits == ["/ruler.jsonl", "/ruler.jsonl"]  # the cached file is not fetched again
    assert len(read_benchmark_jsonl(dest)) == 48
    json.loads(dest.read_text().splitlines()[0])
