import json
import socket
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
import wandb
from omegaconf import OmegaConf

from lw.errors import UserError
from lw.tracking import Tracker, check_logger, read_offline_run, redact, start_tracker


def test_redact_hides_secret_values_at_any_depth():
    config = {"judge": {"api_key": "sk-123", "base_url": "http://x"}, "hf_token": "hf_abc",
              "list": [{"password": "p"}], "tokenizer": {"path": "t"}, "max_tokens": 5, "pad_token": "<pad>", "WANDB_API_KEY": "k", "no_secret": None}
    out = redact(config)
    assert out["judge"] == {"api_key": "<redacted>", "base_url": "http://x"}
    assert out["hf_token"] == "<redacted>" and out["list"] == [{"password": "<redacted>"}]
    assert "sk-123" not in str(out) and "hf_abc" not in str(out)
    assert out["max_tokens"] == 5
    assert out["no_secret"] is None
    assert out["pad_token"] == "<pad>" and out["WANDB_API_KEY"] == "<redacted>"


@pytest.mark.parametrize("key", ["credentials", "credential", "password", "passwd", "hf_token", "hub_token",
                                 "access_token", "auth_token", "bearer_token", "api_token", "token", "secret",
                                 "client_secret", "apikey", "API_KEY", "openai_api_key"])
def test_redact_hides_every_secret_looking_key(key):
    assert redact({"a": {key: "s3cr3t"}}) == {"a": {key: "<redacted>"}}


@pytest.mark.parametrize("key", ["max_tokens", "pad_token", "eos_token", "tokenizer", "api_key_env", "tokens",
                                 "secret_env", "password_file_env"])
def test_redact_keeps_keys_that_only_look_alike(key):
    assert redact({key: "v"}) == {key: "v"}


def test_only_rank_zero_tracks(monkeypatch, tmp_path):
    monkeypatch.setenv("RANK", "1")

    class Cfg:
        kind = "wandb"

    assert type(start_tracker(Cfg, {}, tmp_path, "n", "g")) is Tracker


# W&B's server out of reach: a loopback port that refuses connections, and one that accepts them and
# never answers (a silent network); the real wandb client with a fake key, online, a short wait.
FAKE_KEY = "f" * 40


@pytest.fixture
def refusing_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return port  # closed again: nothing listens there


@pytest.fixture
def silent_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen(64)  # connections complete in the kernel's backlog and are never answered
        yield s.getsockname()[1]


def logger_cfg(**changes):
    from lw.config import LoggerConfig

    cfg = OmegaConf.structured(LoggerConfig)
    cfg.update({"mode": "online", "init_timeout": 2, **changes})
    return cfg


@pytest.fixture
def wandb_at(monkeypatch):
    """Point W&B at a loopback port with a fake key; W&B's service (which keeps the server's address
    it started with) ends with the test, as it does with lw's process."""
    def at(port: int) -> None:
        monkeypatch.setenv("WANDB_BASE_URL", f"http://127.0.0.1:{port}")
        monkeypatch.setenv("WANDB_API_KEY", FAKE_KEY)

    yield at
    wandb.teardown()


@pytest.mark.slow  # starts W&B's service
def test_a_silent_server_with_on_unreachable_fail_is_one_line(wandb_at, tmp_path, silent_port):
    wandb_at(silent_port)
    with pytest.raises(UserError) as err:
        start_tracker(logger_cfg(on_unreachable="fail"), {}, tmp_path, "run", "g")
    message = str(err.value)
    assert message.startswith(f"W&B server http://127.0.0.1:{silent_port} not reachable within 2 s (")
    assert message.endswith("or set logger.on_unreachable=offline to log offline and upload later, or logger=none")
    assert "\n" not in message and FAKE_KEY not in message
    assert not list(tmp_path.glob("wandb/offline-run-*"))


@pytest.mark.slow  # starts W&B's service
def test_an_unreachable_server_logs_offline_in_the_run_directory_in_one_warning(wandb_at, tmp_path, caplog,
                                                                                 refusing_port):
    wandb_at(refusing_port)
    with caplog.at_level("WARNING", logger="lw.tracking"):
        tracker = start_tracker(logger_cfg(), {"lr": 1e-3, "judge": {"api_key": FAKE_KEY}}, tmp_path, "run", "g")
    (offline,) = tmp_path.glob("wandb/offline-run-*")
    (record,) = [r for r in caplog.records if r.name.startswith("lw")]
    assert record.getMessage() == (
        f"W&B server http://127.0.0.1:{refusing_port} not reachable within 2 s (Timed out while retrying: Post "
        f"\"http://127.0.0.1:{refusing_port}/graphql\": dial tcp 127.0.0.1:{refusing_port}: connect: connection "
        f"refused): logging offline in {offline}; upload it later with `wandb sync {offline}`")
    tracker.log({"train/loss": 1.5})
    tracker.summary({"ruler/S_l": 80.0})
    tracker.finish(0)
    wandb.teardown()  # what the end of lw's process does: W&B's service closes the run's files
    logged = read_offline_run(offline)  # what `wandb sync` uploads
    assert logged["history"][0]["train/loss"] == 1.5 and logged["summary"]["ruler/S_l"] == 80.0
    assert logged["config"]["lr"] == 1e-3 and logged["config"]["judge"] == {"api_key": "<redacted>"}
    written = [p for p in tmp_path.rglob("*") if p.is_file() and FAKE_KEY.encode() in p.read_bytes()]
    assert written == []  # the key is nowhere on disk


@pytest.mark.parametrize("change, says", [
    ({"init_timeout": 0}, "logger.init_timeout=0 must lie in (0, 600] seconds"),
    ({"init_timeout": 601}, "logger.init_timeout=601 must lie in (0, 600] seconds"),
    ({"finish_timeout": 0}, "logger.finish_timeout=0 must lie in (0, 3600] seconds"),
])
def test_w_and_b_settings_out_of_range_are_refused(change, says):
    with pytest.raises(UserError) as err:
        check_logger(logger_cfg(**change))
    assert str(err.value).startswith(says)


class VanishingWandbServer(BaseHTTPRequestHandler):
    """A loopback stand-in for the W&B server, which cannot run here: it answers what `wandb.init`
    asks (GraphQL's UpsertBucket with the bucket it creates, empty data for the other queries) and
    the run's file stream, until the test sets `vanished`; then it takes requests and never answers."""

    def log_message(self, *args):
        pass

    def do_POST(self):
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        if self.server.vanished.is_set():
            self.server.released.wait()  # until the test ends: a server gone silent
            return
        query = json.loads(body) if self.path.startswith("/graphql") else {}
        self.server.asked.append(query.get("operationName") or self.path)
        data = {}
        if query.get("operationName") == "UpsertBucket":
            entity = {"id": "RW50aXR5OjE=", "name": "lw-tests"}
            data = {"upsertBucket": {"inserted": True, "bucket": {
                "id": "QnVja2V0OjE=", "name": query["variables"].get("name") or "run", "displayName": "run",
                "description": "", "config": "{}", "sweepName": None, "historyLineCount": 0,
                "project": {"id": "UHJvamVjdDox", "name": "lw", "entity": entity}}}}
        reply = json.dumps({"data": data}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(reply)))
        self.end_headers()
        self.wfile.write(reply)


@pytest.fixture
def wandb_server():
    server = ThreadingHTTPServer(("127.0.0.1", 0), VanishingWandbServer)
    server.daemon_threads = True
    server.vanished, server.released, server.asked = threading.Event(), threading.Event(), []
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield server
    server.released.set()
    server.shutdown()


@pytest.mark.slow  # starts W&B's service
def test_a_server_lost_mid_run_holds_its_end_at_most_finish_timeout_and_loses_nothing(wandb_at, wandb_server,
                                                                                      tmp_path):
    wandb_at(wandb_server.server_address[1])
    tracker = start_tracker(logger_cfg(init_timeout=10, finish_timeout=2), {"lr": 1e-3}, tmp_path, "run", "g")
    assert "UpsertBucket" in wandb_server.asked  # online: the server made the run
    (online,) = tmp_path.glob("wandb/run-*")
    tracker.log({"train/loss": 2.0})
    wandb_server.vanished.set()
    tracker.log({"train/loss": 1.0})
    tracker.summary({"ruler/S_l": 70.0})
    ending = threading.Thread(target=tracker.finish, args=(0,), daemon=True)
    ending.start()
    ending.join(timeout=120)  # without logger.finish_timeout it waits for the server for ever
    assert not ending.is_alive(), "the end of the run waited on a server that never answers"
    wandb.teardown()
    logged = read_offline_run(online)  # what `wandb sync` uploads later
    assert [h["train/loss"] for h in logged["history"]] == [2.0, 1.0] and logged["summary"]["ruler/S_l"] == 70.0
