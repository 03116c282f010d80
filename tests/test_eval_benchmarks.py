"""Benchmark files: items read from benchmark-shaped files, the official ones as docs/science.md describes
them (where this machine has them), bad lines named, downloads checked."""

import hashlib
import json
from collections import Counter

import pytest
from omegaconf import OmegaConf

from lw.config import BenchmarkConfig
from lw.eval.benchmarks import OFFICIAL_FILES, benchmark_file, judge_template, load_items, read_benchmark_jsonl
from lw.eval.download import download
from lw.words import parse_length

PAPER_SUBSETS = {"0-500": 26, "500-2000": 36, "2000-4000": 31, "4000-20000": 27}


def bench(kind, data_dir, **kw):
    return OmegaConf.structured(BenchmarkConfig(kind=kind, data_dir=str(data_dir), **kw))


def test_longbench_write_items_fall_into_the_papers_subsets(bench_data_dir):
    items = load_items(bench("longbench_write", bench_data_dir), cache_dir="unused")
    assert len(items) == 120 and len({i["prompt"] for i in items}) == 120
    assert Counter(i["subset"] for i in items) == PAPER_SUBSETS
    assert next(i["subset"] for i in items if i["length"] == 20000) == "4000-20000"  # the last subset is closed
    assert Counter(i["language"] for i in items) == {"en": 60, "zh": 60}
    english = load_items(bench("longbench_write", bench_data_dir, file="longbench_write_en.jsonl"), cache_dir="unused")
    assert len(english) == 60 and {i["language"] for i in english} == {"en"}


def test_longwrite_ruler_is_8_instructions_by_6_lengths(bench_data_dir):
    items = load_items(bench("longwrite_ruler", bench_data_dir), cache_dir="unused")
    assert len(items) == 48
    assert Counter(i["length"] for i in items) == {n: 8 for n in (1000, 2000, 5000, 10000, 20000, 30000)}
    assert Counter(i["language"] for i in items) == {"en": 24, "zh": 24}
    assert "subset" not in items[0]
    assert len(load_items(bench("longwrite_ruler", bench_data_dir, limit=5), cache_dir="unused")) == 5


def test_the_official_files_are_the_pinned_ones(official_bench_dir):
    for name, digest in OFFICIAL_FILES.items():
        assert hashlib.sha256((official_bench_dir / name).read_bytes()).hexdigest() == digest, name
    template = judge_template(bench("longbench_write", official_bench_dir), cache_dir="unused")
    assert template.startswith("You are an expert in evaluating text quality.") and "Be as strict as possible" in template
    assert "Reading Experience" in template and template.count("$INST$") == template.count("$RESPONSE$") == 1


def test_the_official_longbench_write_has_the_papers_subsets(official_bench_dir):
    items = load_items(bench("longbench_write", official_bench_dir), cache_dir="unused")
    assert len(items) == 120 and Counter(i["subset"] for i in items) == PAPER_SUBSETS
    english = load_items(bench("longbench_write", official_bench_dir, file="longbench_write_en.jsonl"),
                         cache_dir="unused")
    # One "English" prompt is written in Chinese (it asks for an English article): language follows the prompt.
    assert len(english) == 60 and Counter(i["language"] for i in english) == {"en": 59, "zh": 1}
    ruler = load_items(bench("longwrite_ruler", official_bench_dir), cache_dir="unused")
    assert Counter(i["length"] for i in ruler) == {n: 8 for n in (1000, 2000, 5000, 10000, 20000, 30000)}


@pytest.mark.parametrize("line, message", [
    ('{"prompt": "b", "type": "x"}', "bad.jsonl:2: missing field 'length'"),
    ('{"length": 100}', "bad.jsonl:2: missing field 'prompt'"),
    ('{"prompt": "b", "length": "many"}', "bad.jsonl:2: field 'length' must be a positive integer, got 'many'"),
    ('{"prompt": "b", "length": 12.5}', "bad.jsonl:2: field 'length' must be a positive integer, got 12.5"),
    ('{"prompt": "b", "length": 0}', "bad.jsonl:2: field 'length' must be a positive integer"),
    ('{"prompt": "b", "length": true}', "bad.jsonl:2: field 'length' must be a positive integer, got True"),
    ('{"prompt": "b", "length": null}', "bad.jsonl:2: missing field 'length'"),
    ('{"prompt": "b", "length": [100]}', "bad.jsonl:2: field 'length' must be a positive integer, got [100]"),
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


@pytest.mark.parametrize("value", [True, False, "1e3", "-5", None, {"n": 100}])
def test_a_length_must_be_a_number_and_a_boolean_is_not_one(value):
    with pytest.raises(ValueError, match="x.jsonl:1: field 'length' must be a positive integer"):
        parse_length(value, "x.jsonl:1")
    assert parse_length(1, "x.jsonl:1") == 1


def test_missing_data_dir_file_is_named(tmp_path):
    with pytest.raises(FileNotFoundError, match="longwrite_ruler.jsonl"):
        benchmark_file(OmegaConf.structured(BenchmarkConfig(kind="longwrite_ruler", data_dir=str(tmp_path))),
                       "longwrite_ruler.jsonl", "unused")


@pytest.mark.slow
def test_download_once_checked_and_atomic(tmp_path, file_server, bench_data_dir):
    url, www, hits = file_server
    data = (bench_data_dir / "longwrite_ruler.jsonl").read_bytes()
    (www / "ruler.jsonl").write_bytes(data)
    dest = tmp_path / "cache" / "ruler.jsonl"
    with pytest.raises(ValueError, match="SHA-256"):
        download(f"{url}/ruler.jsonl", dest, sha256="0" * 64)
    assert not dest.exists() and not list(dest.parent.glob("*.tmp"))  # nothing half-written is left
    digest = hashlib.sha256(data).hexdigest()
    assert download(f"{url}/ruler.jsonl", dest, sha256=digest).read_bytes() == data
    assert download(f"{url}/ruler.jsonl", dest, sha256=digest) == dest
    assert hits == ["/ruler.jsonl", "/ruler.jsonl"]  # the cached file is not fetched again
    assert len(read_benchmark_jsonl(dest)) == 48
    json.loads(dest.read_text().splitlines()[0])
