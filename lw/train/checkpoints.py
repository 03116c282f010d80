"""Which trainer checkpoint a run resumes from: the newest complete one.

transformers writes a checkpoint's files one after another (the weights; the optimizer and the
scheduler, or DeepSpeed's `global_stepN` shards and its `latest` file; each rank's RNG state;
`trainer_state.json` last, by rank 0) and resumes from the highest-numbered `checkpoint-N` folder
whatever it holds. A kill inside a save (a time limit, a preemption past its grace period, the OOM
killer) leaves a torn folder: resuming from it fails in a traceback, or goes on silently with a
fresh optimizer and schedule. Here a torn checkpoint is moved aside (never deleted) to
`checkpoints/torn/` and the run resumes from the newest complete one (docs/engineering.md,
"Checkpoints torn by a kill"). Everything is judged from the files' sizes and framing, never by
loading the tensors.
"""

from __future__ import annotations

import json
import logging
import os
import re
import signal
import zipfile
from contextlib import contextmanager
from datetime import datetime, timezone
from pathlib import Path

from lw.errors import UserError
from lw.run_dir import torn_checkpoints_dir

log = logging.getLogger(__name__)

TRAINER_STATE = "trainer_state.json"
_CHECKPOINT = re.compile(r"^checkpoint-(\d+)$")  # transformers.trainer_utils.PREFIX_CHECKPOINT_DIR
_RANK_FILE = re.compile(r"(?:^rng_state_|zero_pp_rank_)(\d+)")
_WEIGHTS = ("model.safetensors", "pytorch_model.bin", "adapter_model.safetensors", "adapter_model.bin")
_WEIGHT_INDEXES = ("model.safetensors.index.json", "pytorch_model.bin.index.json")


def checkpoints_newest_first(folder: Path) -> list[Path]:
    found = [p for p in Path(folder).iterdir() if p.is_dir() and _CHECKPOINT.match(p.name)] if Path(folder).is_dir() else []
    return sorted(found, key=lambda p: int(_CHECKPOINT.match(p.name).group(1)), reverse=True)


def recorded_step(checkpoint: Path) -> int | None:
    """The step `trainer_state.json` records; None when it is missing or cut short (a kill while it
    was written). A file that parses up to a mistake before its end, or lacks its step, was edited by
    hand: that is the user's to fix (one line, exit status 2), as nothing can judge the folder."""
    path = checkpoint / TRAINER_STATE
    if not path.is_file():
        return None
    text = path.read_bytes().decode("utf-8", errors="replace")
    try:
        state = json.loads(text)
    except json.JSONDecodeError as err:
        if err.pos >= len(text.rstrip()) or err.msg.startswith("Unterminated string"):
            return None  # the parser ran off the end: the file was cut short
        raise UserError(f"{path}, line {err.lineno}: not valid JSON ({err.msg}); a checkpoint edited by hand? "
                        f"repair the file, or move {checkpoint} out of {checkpoint.parent}") from None
    step = state.get("global_step") if isinstance(state, dict) else None
    if not isinstance(step, int) or step != int(checkpoint.name.split("-")[1]):
        raise UserError(f"{path}: field global_step is {step!r}, not the folder's step {checkpoint.name.split('-')[1]} "
                        f"(a checkpoint renamed or edited by hand?); repair it, or move {checkpoint} out of "
                        f"{checkpoint.parent}")
    return step


def cut_short(path: Path) -> bool:
    """Whether a file ends before its own framing says it does: a zip archive (torch.save's format)
    without its closing directory, a safetensors file shorter than its header's tensors, an empty file."""
    size = path.stat().st_size
    if size == 0:
        return True
    if path.suffix in (".pt", ".pth", ".bin"):
        with open(path, "rb") as f:
            magic = f.read(4)
        # torch.save's zip ends in a central directory; the legacy pickle format has no framing to check.
        return len(magic) < 4 or (magic == b"PK\x03\x04" and not zipfile.is_zipfile(path))
    if path.suffix == ".safetensors":
        with open(path, "rb") as f:
            header_size = int.from_bytes(f.read(8), "little")
            try:
                header = json.loads(f.read(header_size))
            except ValueError:
                return True
        ends = [t["data_offsets"][1] for k, t in header.items() if k != "__metadata__"]
        return size < 8 + header_size + max(ends, default=0)
    return False


def saved_ranks(checkpoint: Path) -> set[int]:
    """The ranks whose files the checkpoint holds (rng_state_R.pth, DeepSpeed's zero_pp_rank_R_*)."""
    return {int(m.group(1)) for p in checkpoint.rglob("*") if (m := _RANK_FILE.search(p.name))}


def deepspeed_tag(checkpoint: Path) -> Path | None:
    """DeepSpeed's folder for this checkpoint (`latest` names it); None when not a DeepSpeed checkpoint."""
    latest = checkpoint / "latest"
    named = latest.read_text().strip() if latest.is_file() else ""
    return checkpoint / named if named else next(iter(sorted(checkpoint.glob("global_step*"))), None)


def needed_files(checkpoint: Path, world_size: int, deepspeed: bool) -> list[Path]:
    """Every file a run of `world_size` ranks loads to resume from the checkpoint."""
    tag = deepspeed_tag(checkpoint)
    if (tag is not None) != deepspeed:
        saved = "under DeepSpeed" if tag is not None else "without DeepSpeed"
        raise UserError(f"{checkpoint} was saved {saved}, and this run {'is' if deepspeed else 'is not'}: resume it "
                        f"with the launcher that saved it, or move it out of {checkpoint.parent}")
    ranks = saved_ranks(checkpoint)
    if ranks - set(range(world_size)) or (tag is not None and ranks and max(ranks) + 1 < world_size):
        raise UserError(f"{checkpoint} holds the files of {max(ranks) + 1} rank(s), this run has {world_size}: resume "
                        f"with the same launcher.nproc_per_node x launcher.nnodes, or move it out of {checkpoint.parent}")
    rng = ["rng_state.pth"] if world_size == 1 else [f"rng_state_{r}.pth" for r in range(world_size)]
    files = [checkpoint / name for name in (*rng, "scheduler.pt")]
    if tag is None:
        return files + [checkpoint / "optimizer.pt"] + weight_files(checkpoint)
    files.append(checkpoint / "latest")
    if (tag / "mp_rank_00_model_states.pt").exists() and not list(tag.glob("*zero_pp_rank_*")):
        return files + [tag / "mp_rank_00_model_states.pt"]  # no ZeRO: one file holds it all
    for rank in range(world_size):
        files += [next(tag.glob(f"*zero_pp_rank_{rank}_mp_rank_00_optim_states.pt"),
                       tag / f"zero_pp_rank_{rank}_mp_rank_00_optim_states.pt")]
    model_states = [tag / f"zero_pp_rank_{r}_mp_rank_00_model_states.pt" for r in range(world_size)]
    return files + ([tag / "mp_rank_00_model_states.pt"] if (tag / "mp_rank_00_model_states.pt").exists()
                    else model_states)


def weight_files(checkpoint: Path) -> list[Path]:
    """The model's weights: one file, or an index and every shard it names."""
    for name in _WEIGHT_INDEXES:
        index = checkpoint / name
        if index.is_file():
            try:
                shards = sorted(set(json.loads(index.read_text())["weight_map"].values()))
            except (ValueError, KeyError):
                return [index]  # unreadable: judged as cut short below when it is
            return [index] + [checkpoint / shard for shard in shards]
    return [next((checkpoint / n for n in _WEIGHTS if (checkpoint / n).is_file()), checkpoint / _WEIGHTS[0])]


def what_is_torn(checkpoint: Path, world_size: int, deepspeed: bool) -> list[str]:
    """What the checkpoint lacks for this run to resume from it (missing or cut-short files); empty
    when it is complete. Raises UserError for a folder edited by hand that cannot be judged."""
    if recorded_step(checkpoint) is None:
        return [f"{TRAINER_STATE} (written last) missing or cut short"]
    found = [p for p in checkpoint.rglob("*") if p.is_file()]
    problems = [f"{p.relative_to(checkpoint)} cut short" for p in found if cut_short(p)]
    problems += [f"{p.relative_to(checkpoint)} missing" for p in needed_files(checkpoint, world_size, deepspeed)
                 if not p.is_file()]
    return problems


def set_aside(checkpoint: Path) -> Path:
    """Move a torn checkpoint into checkpoints/torn/ (a second one of the same step gets the time)."""
    torn = torn_checkpoints_dir(checkpoint.parent)
    torn.mkdir(exist_ok=True)
    target = torn / checkpoint.name
    if target.exists():
        target = torn / f"{checkpoint.name}.torn-{datetime.now(timezone.utc):%Y%m%dT%H%M%S%f}"
    os.replace(checkpoint, target)
    return target


def resume_checkpoint(folder: Path, world_size: int, deepspeed: bool) -> Path | None:
    """The newest complete checkpoint in `folder`; each newer torn one is moved aside with one
    warning line, and when none is complete one line says that training starts over. Run by one
    process (global rank 0) while the others wait."""
    torn = []
    for checkpoint in checkpoints_newest_first(folder):
        problems = what_is_torn(checkpoint, world_size, deepspeed)
        if not problems:
            break
        torn.append((checkpoint, set_aside(checkpoint), problems))
    else:
        checkpoint = None
    for was, now, problems in torn:
        instead = f"resuming from {checkpoint}" if checkpoint else "no complete checkpoint left: training starts over"
        log.warning("checkpoint %s is incomplete (%s), a save cut short by a kill; moved aside to %s; %s",
                    was, ", ".join(problems[:4]) + (f" and {len(problems) - 4} more" if len(problems) > 4 else ""),
                    now, instead)
    return checkpoint


def newest_complete(folder: Path, world_size: int, deepspeed: bool) -> Path | None:
    """The newest complete checkpoint, moving nothing (for messages); None if none is."""
    for checkpoint in checkpoints_newest_first(folder):
        try:
            if not what_is_torn(checkpoint, world_size, deepspeed):
                return checkpoint
        except UserError:
            return None
    return None


# Fault injection for the tests (tests/test_checkpoint_kills.py): the named rank (LW_FAULT_RANK,
# default 0) SIGKILLs itself inside the save of step LW_FAULT_KILL_STEP, at a named point: "weights"
# (after the model's weights, before the optimizer), "optimizer" (halfway through writing its
# optimizer file) or "state" (after its RNG state, before trainer_state.json).
KILL_POINT_ENV = "LW_FAULT_KILL_IN_SAVE"
KILL_STEP_ENV = "LW_FAULT_KILL_STEP"
KILL_POINTS = ("weights", "optimizer", "state")


def kill_inside_save(trainer) -> None:
    """Arm the kill named by the environment on this trainer (nothing when it names none)."""
    point = os.environ.get(KILL_POINT_ENV)
    if not point or trainer.args.process_index != int(os.environ.get("LW_FAULT_RANK", "0")):
        return
    if point not in KILL_POINTS:
        raise ValueError(f"{KILL_POINT_ENV}={point!r}: one of {KILL_POINTS}")
    step = int(os.environ[KILL_STEP_ENV])
    save_optimizer, save_rng = trainer._save_optimizer_and_scheduler, trainer._save_rng_state

    def die(where: str) -> None:
        losses = [h["loss"] for h in trainer.state.log_history if "loss" in h]
        print(f"fault injection: rank {trainer.args.process_index} killed {where} of checkpoint-{step} "
              f"(last logged loss {losses[-1] if losses else None!r})", flush=True)
        os.kill(os.getpid(), signal.SIGKILL)

    def optimizer_and_scheduler(output_dir):
        if trainer.state.global_step == step and point == "weights":
            die("after the weights")
        if trainer.state.global_step == step and point == "optimizer":
            with _optimizer_file_cut_halfway(die):
                return save_optimizer(output_dir)
        return save_optimizer(output_dir)

    def rng_state(output_dir):
        save_rng(output_dir)
        if trainer.state.global_step == step and point == "state":
            die("before the trainer state")

    trainer._save_optimizer_and_scheduler, trainer._save_rng_state = optimizer_and_scheduler, rng_state


@contextmanager
def _optimizer_file_cut_halfway(die):
    """While active, torch.save of an optimizer file writes half its bytes, flushed, then `die`s."""
    import io

    import torch

    save = torch.save

    def cut(obj, f, *args, **kwargs):
        if "optim" not in Path(str(f)).name:
            return save(obj, f, *args, **kwargs)
        buffer = io.BytesIO()
        save(obj, buffer, *args, **kwargs)
        with open(f, "wb") as out:
            out.write(buffer.getvalue()[: buffer.tell() // 2])
            out.flush()
            os.fsync(out.fileno())
            die(f"inside {Path(str(f)).name}")

    torch.save = cut
    try:
        yield
    finally:
        torch.save = save
