"""Kill and resume through the entry point: each long job (hf generation, openai generation,
judging) gets SIGKILL midway, then the same command runs again to the end. The records, and for
the served jobs the loopback server's own request log, show that nothing finished before the kill
is asked or written again and nothing is lost. Training's kill and resume is in
test_launch_deepspeed.py."""

import json
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest

from lw.eval.benchmarks import load_items
from lw.eval.judge import cache_key, judge_prompt
from lw.testing.openai_server import OpenAIServer, Reply, judge_json, user_text

from helpers import compose_lw, save_tiny_checkpoint

pytestmark = pytest.mark.slow  # every test here launches lw, ranks or a server

# The start of a record, as SIGKILL in the middle of a write leaves it.
TORN = b'{"id": "torn-by-the-kill", "prom'


class Lw:
    """`python -m lw OVERRIDES` in its own process group (so that SIGKILL takes all of it), its
    output in a log file; the environment as helpers.run_lw builds it, with a cache of the test's own."""

    def __init__(self, overrides: list[str], cwd: Path):
        self.overrides, self.cwd = overrides, cwd
        self.env = {**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1", "LW_CACHE": str(cwd / "cache")}
        self.runs = 0

    def start(self) -> subprocess.Popen:
        self.runs += 1
        self.log = self.cwd / f"lw-{self.runs}.log"
        with open(self.log, "wb") as log:
            return subprocess.Popen([sys.executable, "-m", "lw", *self.overrides], cwd=self.cwd, env=self.env,
                                    stdout=log, stderr=subprocess.STDOUT, start_new_session=True)

    def tail(self) -> str:
        return self.log.read_text(errors="replace")[-6000:]

    def kill_once(self, find_file, lines: int, timeout: float = 120) -> tuple[Path, bytes]:
        """Start lw and SIGKILL it once the file that `find_file()` returns holds `lines` complete
        lines; that file and the complete lines it kept."""
        process = self.start()
        deadline = time.monotonic() + timeout
        path = None
        while path is None or len(complete(path).splitlines()) < lines:
            assert process.poll() is None, f"lw ended ({process.returncode}) before the kill:\n{self.tail()}"
            assert time.monotonic() < deadline, f"no {lines} lines in {timeout} s:\n{self.tail()}"
            time.sleep(0.02)
            path = path or find_file()
        os.killpg(process.pid, signal.SIGKILL)
        assert process.wait(timeout=30) == -signal.SIGKILL
        kept = complete(path)
        with open(path, "ab") as f:
            f.write(TORN)  # the kill may have landed mid-write; make sure this run meets a torn line
        return path, kept

    def run(self, timeout: float = 180) -> None:
        process = self.start()
        try:
            returncode = process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            raise AssertionError(f"lw did not finish in {timeout} s:\n{self.tail()}") from None
        assert returncode == 0, f"the rerun failed ({returncode}):\n{self.tail()}"


def complete(path: Path) -> bytes:
    """The file's bytes up to its last newline: the records a reader can trust."""
    data = path.read_bytes() if path.exists() else b""
    return data[: data.rfind(b"\n") + 1]


def records(data: bytes) -> list[dict]:
    rows = []
    for number, line in enumerate(data.splitlines(), start=1):
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:
            raise AssertionError(f"line {number} is not a record (appended onto a torn line?): {line[:80]!r}") from None
    return rows


def first(cwd: Path, pattern: str):
    return lambda: next(cwd.glob(pattern), None)


def check_appended_only(path: Path, kept: bytes, key: str, expected: set[str]) -> int:
    """The file after the rerun: what the kill left, byte for byte, then one record per missing key.
    The number of records the rerun wrote again (the figure: 0)."""
    data = path.read_bytes()
    assert data.startswith(kept), "the records finished before the kill were rewritten"
    before, after = {r[key] for r in records(kept)}, [r[key] for r in records(data[len(kept):])]
    repeated = sum(k in before for k in after)
    counts = Counter(r[key] for r in records(data))
    assert set(counts) == expected, f"lost: {sorted(expected - set(counts))}, foreign: {sorted(set(counts) - expected)}"
    assert max(counts.values()) == 1, (f"written twice ({repeated} rewritten after the kill): "
                                       f"{sorted(k for k, n in counts.items() if n > 1)}")
    return repeated


@pytest.fixture
def steady_model(tmp_path):
    """The tiny checkpoint made to write exactly max_new_tokens tokens, so that every item takes as
    long and the kill lands midway."""
    return save_tiny_checkpoint(tmp_path / "model", min_new_tokens=64)


def test_hf_generation_killed_midway_resumes_without_repeating(tmp_path, steady_model):
    overrides = ["task=eval", f"model.path={steady_model}", "generation.batch_size=1", "generation.max_new_tokens=64",
                 "eval.toy_ruler.samples_per_prompt=3", "logger=none"]
    expected = {item["id"] for item in load_items(compose_lw(*overrides).eval.toy_ruler)}
    assert len(expected) == 48
    lw = Lw(overrides, tmp_path)
    path, kept = lw.kill_once(first(tmp_path, "runs/*/eval/toy_ruler/predictions.jsonl"), lines=8)
    assert 8 <= len(records(kept)) < len(expected), "the kill did not land midway"

    lw.run()
    assert len(list((tmp_path / "runs").iterdir())) == 1  # the same command resumed the same run directory
    repeated = check_appended_only(path, kept, "id", expected)
    print(f"hf generation: {len(records(kept))} of {len(expected)} saved at the kill; "
          f"repeated calls after resume (items generated again): {repeated}")
    assert repeated == 0
    assert json.loads(next((tmp_path / "runs").glob("*/metrics.json")).read_text())["ruler/n"] == len(expected)


def written_for(prompt: str) -> str:
    return f"{len(prompt.split())} words answer {prompt}"


def slow_writer(body, attempt):
    return Reply(written_for(user_text(body)), delay=0.25)


def test_openai_generation_killed_midway_asks_nothing_finished_again(tmp_path):
    with OpenAIServer(slow_writer) as server:
        overrides = ["task=eval", "generation=openai", f"generation.base_url={server.base_url}",
                     "generation.model=served-model", "generation.api_key_env=null", "generation.concurrency=4",
                     "eval.toy_ruler.lengths=[10,20,30,40,50,60,70,80,90,100,110,120]",
                     "eval.toy_ruler.topics=[rivers,music,trains,bridges]", "eval.toy_ruler.samples_per_prompt=1",
                     "logger=none"]
        items = load_items(compose_lw(*overrides).eval.toy_ruler)
        prompts = {item["id"]: item["prompt"] for item in items}
        assert len(set(prompts.values())) == len(items) == 48  # one prompt per item: the log maps to items
        lw = Lw(overrides, tmp_path)
        path, kept = lw.kill_once(first(tmp_path, "runs/*/eval/toy_ruler/predictions.jsonl"), lines=12)
        saved = {row["prompt"] for row in records(kept)}
        assert 12 <= len(saved) < len(items), "the kill did not land midway"
        time.sleep(0.5)  # the server's handlers take in what the killed client had sent
        before = server.count()

        lw.run()
        asked_after = Counter(user_text(r["body"]) for r in server.requests[before:])
    repeated = sum(asked_after[p] for p in saved)
    print(f"openai generation: {len(saved)} of {len(items)} saved at the kill, "
          f"{before - len(saved)} asked but not saved; repeated calls after resume: {repeated}")
    assert repeated == 0
    assert set(asked_after) == set(prompts.values()) - saved  # the missing ones, and only they, asked
    assert check_appended_only(path, kept, "id", set(prompts)) == 0
    for row in records(path.read_bytes()):
        assert row["prompt"] == prompts[row["id"]] and row["response"] == written_for(row["prompt"])


def slow_judge(body, attempt):
    return Reply(judge_json(4), delay=0.1)


def test_judging_killed_midway_asks_no_cached_judgement_again(tmp_path, bench_data_dir):
    predictions = tmp_path / "predictions.jsonl"
    rows = [json.loads(line) for line in (bench_data_dir / "longbench_write.jsonl").open()]
    predictions.write_text("".join(json.dumps({**row, "response": f"an answer of {i} words"}, ensure_ascii=False)
                                   + "\n" for i, row in enumerate(rows)))
    template = (bench_data_dir / "judge.txt").read_text()
    keys = {cache_key("loopback-judge", judge_prompt(template, row["prompt"], f"an answer of {i} words"))
            for i, row in enumerate(rows)}
    cache = tmp_path / "cache" / "judge" / "loopback-judge.jsonl"
    with OpenAIServer(slow_judge) as server:
        overrides = ["task=score", f"score.predictions={predictions}", "eval=longbench_write",
                     f"eval.longbench_write.data_dir={bench_data_dir}", "judge=openai",
                     f"judge.base_url={server.base_url}", "judge.model=loopback-judge", "judge.api_key_env=null",
                     "judge.concurrency=4", "logger=none"]
        lw = Lw(overrides, tmp_path)
        _, kept = lw.kill_once(lambda: cache, lines=20)
        judged = {row["key"] for row in records(kept)}
        assert 20 <= len(judged) < len(rows), "the kill did not land midway"
        time.sleep(0.5)  # the server's handlers take in what the killed client had sent
        before = server.count()

        lw.run()
        asked_after = Counter(cache_key("loopback-judge", user_text(r["body"])) for r in server.requests[before:])
    repeated = sum(asked_after[k] for k in judged)
    print(f"judging: {len(judged)} of {len(rows)} cached at the kill, {before - len(judged)} asked but not saved; "
          f"repeated calls after resume: {repeated}")
    assert repeated == 0
    assert set(asked_after) == keys - judged and max(asked_after.values()) == 1  # the missing ones, once each
    assert check_appended_only(cache, kept, "key", keys) == 0
    (run_dir,) = (tmp_path / "runs").iterdir()
    judgements = records((run_dir / "eval/longbench_write/judgements.jsonl").read_bytes())
    assert len(judgements) == len(rows) and {j["status"] for j in judgements} == {"ok"}
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["longbench_write/judge_failed"] == 0 and metrics["longbench_write/judge_judged"] == len(rows)
