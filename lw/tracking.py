"""Experiment tracking: W&B on rank 0, or nothing. Secrets never reach a logged config."""

from __future__ import annotations

import logging
import os
import re
from pathlib import Path
from typing import Any

from lw.errors import UserError
from lw.run_dir import wandb_dir

log = logging.getLogger(__name__)

_SECRET_KEY = re.compile(r"(api_?key|secret|passw(or)?d|credentials?|^token|(access|auth|hub|hf|bearer|api)_?token)$",
                         re.IGNORECASE)


def is_secret_key(name: str) -> bool:
    """Does a config key's name (its last component) look like it holds a secret?"""
    return bool(_SECRET_KEY.search(name))


def redact(value: Any) -> Any:
    """A copy of a nested config with the values of secret-looking keys replaced."""
    if isinstance(value, dict):
        return {k: "<redacted>" if is_secret_key(str(k)) and v is not None else redact(v)
                for k, v in value.items()}
    if isinstance(value, list):
        return [redact(v) for v in value]
    return value


def is_rank_zero() -> bool:
    return int(os.environ.get("RANK", "0")) == 0


class Tracker:
    """No-op tracker (logger=none); the base of the W&B one."""

    report_to = "none"

    def log(self, metrics: dict[str, float]) -> None:
        pass

    def summary(self, metrics: dict[str, Any]) -> None:
        pass

    def image(self, key: str, path: Path) -> None:
        pass

    def table(self, key: str, rows: list[dict], columns: list[str]) -> None:
        pass

    def finish(self, exit_code: int = 0) -> None:
        pass


class WandbTracker(Tracker):
    report_to = "wandb"

    def __init__(self, logger_cfg, config: dict, run_dir: Path, name: str, group: str):
        import wandb

        self._wandb = wandb
        mode = logger_cfg.mode or os.environ.get("WANDB_MODE")
        if mode is None:
            mode = "online" if os.environ.get("WANDB_API_KEY") else "offline"
            if mode == "offline":
                log.warning("W&B: no WANDB_API_KEY in the environment, logging offline under %s "
                            "(upload later with `wandb sync`)", wandb_dir(run_dir))
        run_dir.mkdir(parents=True, exist_ok=True)
        # Two waits on the server outside init_timeout and finish_timeout: wandb's "logged in as"
        # lookup (about 10 s more at the start when it cannot be reached; the user's name is all it
        # gives), and wandb's own usage reports, sent at the process's exit (10 s a try). The user's
        # WANDB_ERROR_REPORTING=true is kept.
        os.environ.setdefault("WANDB_ERROR_REPORTING", "false")
        wandb.setup(settings=wandb.Settings(x_disable_viewer=True))
        # Bounded waits: at the start for the server, at the end for uploads (what is left stays on disk).
        settings = wandb.Settings(init_timeout=float(logger_cfg.init_timeout),
                                  finish_timeout=float(logger_cfg.finish_timeout))
        init = dict(project=logger_cfg.project, entity=logger_cfg.entity, group=logger_cfg.group or group,
                    name=logger_cfg.name or name, tags=list(logger_cfg.tags), config=redact(config),
                    dir=str(run_dir), reinit="finish_previous", settings=settings)
        try:
            self.run = wandb.init(mode=mode, **init)
        except wandb.errors.CommError as err:
            self.run = self._offline_or_fail(logger_cfg, init, err)
        # The HF Trainer's W&B callback finds this run and logs the training curves into it.
        os.environ["WANDB_PROJECT"] = logger_cfg.project

    def _offline_or_fail(self, logger_cfg, init: dict, err: Exception):
        """The server did not answer within logger.init_timeout: log offline, or stop (logger.on_unreachable)."""
        server = os.environ.get("WANDB_BASE_URL", "https://api.wandb.ai")
        why = f"W&B server {server} not reachable within {logger_cfg.init_timeout:g} s ({str(err).splitlines()[0]})"
        if logger_cfg.on_unreachable == "fail":
            raise UserError(f"{why}; check the network or WANDB_BASE_URL, or set logger.on_unreachable=offline "
                            f"to log offline and upload later, or logger=none") from None
        run = self._wandb.init(mode="offline", **init)
        offline = Path(run.dir).parent
        log.warning("%s: logging offline in %s; upload it later with `wandb sync %s`", why, offline, offline)
        return run

    def log(self, metrics):
        self.run.log(metrics)

    def summary(self, metrics):
        self.run.summary.update(metrics)

    def image(self, key, path):
        self.run.log({key: self._wandb.Image(str(path))})

    def table(self, key, rows, columns):
        self.run.log({key: self._wandb.Table(columns=columns, data=[[r.get(c) for c in columns] for r in rows])})

    def finish(self, exit_code=0):
        self.run.finish(exit_code=exit_code)


def check_logger(logger_cfg) -> None:
    """The W&B timeouts, checked before any work (one line, exit status 2); on_unreachable is typed."""
    for key, most in (("init_timeout", 600), ("finish_timeout", 3600)):
        value = logger_cfg[key]
        if not 0 < value <= most:
            raise UserError(f"logger.{key}={value:g} must lie in (0, {most}] seconds: how long W&B may hold "
                            f"the {'start' if key == 'init_timeout' else 'end'} of a run")


def start_tracker(logger_cfg, config: dict, run_dir: Path, name: str, group: str) -> Tracker:
    if logger_cfg.kind == "none" or not is_rank_zero():
        return Tracker()
    return WandbTracker(logger_cfg, config, run_dir, name, group)


def read_offline_run(run_path: Path) -> dict[str, Any]:
    """Config, summary, history and group of an offline W&B run, read from its transaction log.

    wandb keeps an offline run only in `run-*.wandb` (a LevelDB-style log of protobuf records)
    until `wandb sync`; this lets tests and notebooks read one without a server.
    """
    import json
    import struct

    from wandb.proto import wandb_internal_pb2

    data = next(Path(run_path).glob("run-*.wandb")).read_bytes()
    block, pos, chunks, payloads = 32768, 7, [], []  # 7: the ":W&B" header, magic and version
    while pos + 7 <= len(data):
        if block - pos % block < 7:  # a block's tail too short for a header is padding
            pos += block - pos % block
            continue
        length, kind = struct.unpack("<HB", data[pos + 4: pos + 7])
        chunks.append(data[pos + 7: pos + 7 + length])
        pos += 7 + length
        if kind in (1, 4):  # a FULL record, or the LAST piece of one
            payloads.append(b"".join(chunks))
            chunks = []
        elif kind == 0:
            break
    out: dict[str, Any] = {"config": {}, "summary": {}, "history": [], "group": None}
    for payload in payloads:
        record = wandb_internal_pb2.Record()
        record.ParseFromString(payload)
        kind = record.WhichOneof("record_type")
        if kind == "run":  # the group the run was logged under, as wandb.init got it
            out["group"] = record.run.run_group or None
        if kind in ("run", "config"):  # the run record holds the config given to wandb.init
            for item in (record.run.config if kind == "run" else record.config).update:
                out["config"][item.key] = json.loads(item.value_json)
        elif kind == "summary":
            for item in record.summary.update:
                key = "/".join(item.nested_key) if item.nested_key else item.key
                out["summary"][key] = json.loads(item.value_json)
        elif kind == "history":
            out["history"].append({("/".join(i.nested_key) if i.nested_key else i.key): json.loads(i.value_json)
                                   for i in record.history.item})
    return out
