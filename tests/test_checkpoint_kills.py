"""A kill inside a checkpoint's save, on the local path: `lw experiment=smoke` with a checkpoint every
2 steps is SIGKILLed (a real kill, lw.train.checkpoints.kill_inside_save) halfway through writing
optimizer.pt of checkpoint-6, then the same command runs again: it moves the torn checkpoint-6 aside
with one warning line, resumes from checkpoint-4 and ends at the unbroken run's final loss (the loss
the killed run logged at step 6, before its save). The 2-rank ZeRO-3 kill is in
test_launch_deepspeed.py. Then the on-disk states a kill at the other points (after the weights,
before the trainer state) or a hand edit leaves, carved out of the run's complete checkpoint."""

import json
import re
import shutil
import signal
from pathlib import Path

import pytest

from lw.errors import UserError
from lw.train.checkpoints import (
    KILL_POINT_ENV,
    KILL_STEP_ENV,
    cut_short,
    newest_complete,
    resume_checkpoint,
    what_is_torn,
)

from helpers import run_lw

pytestmark = pytest.mark.slow  # launches lw

OVERRIDES = ["experiment=smoke", "trainer.args.save_strategy=steps", "+trainer.args.save_steps=2", "logger=none"]
KILLED_AT = re.compile(r"fault injection: rank 0 killed (.+) of checkpoint-6 \(last logged loss ([0-9.]+)\)")


def final_loss(checkpoint: Path) -> float:
    state = json.loads((checkpoint / "trainer_state.json").read_text())
    return [h["loss"] for h in state["log_history"] if "loss" in h][-1]


def torn_warnings(output: str) -> list[str]:
    return [line for line in output.splitlines() if " is incomplete (" in line]


@pytest.fixture(scope="module")
def killed_once(tmp_path_factory):
    cwd = tmp_path_factory.mktemp("killed_in_save")
    runs = []
    for point in ("optimizer", None):
        env = {KILL_POINT_ENV: point, KILL_STEP_ENV: "6"} if point else {}
        result = run_lw(*OVERRIDES, cwd=cwd, check=False, env=env)
        (run_dir,) = (cwd / "runs").iterdir()
        torn = run_dir / "checkpoints" / "checkpoint-6"
        state = {p.name: cut_short(p) for p in torn.iterdir()} if point and torn.is_dir() else None
        runs.append((result, state))
    return run_dir, runs


def test_a_kill_inside_the_optimizer_file_leaves_it_cut_short_and_no_trainer_state(killed_once):
    _, [(first, on_disk), _] = killed_once
    assert first.returncode == -signal.SIGKILL, first.stderr[-3000:]
    assert KILLED_AT.search(first.stdout).group(1) == "inside optimizer.pt"
    assert on_disk["model.safetensors"] is False and on_disk["optimizer.pt"] is True
    assert "trainer_state.json" not in on_disk and "scheduler.pt" not in on_disk


def test_the_rerun_sets_the_torn_checkpoint_aside_and_resumes_from_the_last_complete_one(killed_once):
    run_dir, [_, (rerun, _)] = killed_once
    checkpoints = run_dir / "checkpoints"
    assert rerun.returncode == 0, rerun.stderr[-4000:]
    (line,) = torn_warnings(rerun.stdout + rerun.stderr)
    assert f"checkpoint {checkpoints / 'checkpoint-6'} is incomplete (trainer_state.json" in line
    assert line.endswith(f"moved aside to {checkpoints / 'torn' / 'checkpoint-6'}; resuming from "
                         f"{checkpoints / 'checkpoint-4'}")
    # The torn folder is kept as the kill left it; the run's own checkpoints are whole.
    assert cut_short(checkpoints / "torn" / "checkpoint-6" / "optimizer.pt")
    assert sorted(p.name for p in checkpoints.glob("checkpoint-*")) == ["checkpoint-2", "checkpoint-4", "checkpoint-6"]
    assert all(what_is_torn(c, 1, False) == [] for c in checkpoints.glob("checkpoint-*"))
    assert (run_dir / "model" / "model.safetensors").is_file() and (run_dir / "metrics.json").is_file()


def test_the_resumed_run_ends_at_the_unbroken_runs_final_loss(killed_once):
    run_dir, [(first, _), _] = killed_once
    unbroken = float(KILLED_AT.search(first.stdout).group(2))  # step 6 was trained and logged before the kill
    resumed = final_loss(run_dir / "checkpoints" / "checkpoint-6")
    print(f"final loss: unbroken {unbroken!r}, after the kill inside the save {resumed!r}")
    assert resumed == pytest.approx(unbroken, rel=1e-4)


@pytest.fixture
def complete(killed_once, tmp_path) -> Path:
    """A copy of the run's complete checkpoint-4, to carve what a kill or a hand leaves."""
    run_dir, _ = killed_once
    folder = tmp_path / "checkpoints"
    shutil.copytree(run_dir / "checkpoints" / "checkpoint-4", folder / "checkpoint-4")
    return folder / "checkpoint-4"


def cut(path: Path, keep: float = 0.5) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * keep)])


@pytest.mark.parametrize("carve, expected", [
    # What a kill after the weights leaves (LW_FAULT_KILL_IN_SAVE=weights): nothing written after them.
    (lambda c: [(c / n).unlink() for n in ("optimizer.pt", "scheduler.pt", "rng_state.pth", "trainer_state.json")],
     ["trainer_state.json (written last) missing or cut short"]),
    # What a kill before the trainer state leaves: all but it.
    (lambda c: (c / "trainer_state.json").unlink(), ["trainer_state.json (written last) missing or cut short"]),
    (lambda c: cut(c / "trainer_state.json"), ["trainer_state.json (written last) missing or cut short"]),
    (lambda c: (c / "trainer_state.json").write_text(""), ["trainer_state.json (written last) missing or cut short"]),
    # Whatever else took them (a full disk, a copy interrupted), a state without its optimizer never resumes.
    (lambda c: [(c / n).unlink() for n in ("optimizer.pt", "scheduler.pt")], ["scheduler.pt missing", "optimizer.pt missing"]),
    (lambda c: cut(c / "optimizer.pt"), ["optimizer.pt cut short"]),
    (lambda c: cut(c / "model.safetensors", 0.9), ["model.safetensors cut short"]),
    (lambda c: (c / "rng_state.pth").unlink(), ["rng_state.pth missing"]),
], ids=["after-the-weights", "before-the-trainer-state", "state-cut-short", "state-empty", "optimizer-and-scheduler-missing", "optimizer-cut-short",
        "weights-cut-short", "rng-missing"])
def test_what_a_kill_leaves_is_torn(complete, carve, expected):
    assert what_is_torn(complete, 1, False) == []
    carve(complete)
    assert what_is_torn(complete, 1, False) == expected


def test_none_complete_means_starting_over_in_one_line(complete, caplog):
    (complete / "optimizer.pt").unlink()
    assert newest_complete(complete.parent, 1, False) is None
    with caplog.at_level("WARNING", logger="lw.train.checkpoints"):
        assert resume_checkpoint(complete.parent, 1, False) is None
    (record,) = caplog.records
    assert record.getMessage().endswith("no complete checkpoint left: training starts over")
    assert (complete.parent / "torn" / "checkpoint-4" / "rng_state.pth").is_file() and not complete.exists()


@pytest.mark.parametrize("edit, says", [
    (lambda t: t.replace('"global_step": 4,', '"global_step": 4,,'), r"trainer_state\.json, line \d+: not valid JSON"),
    (lambda t: t.replace('"global_step": 4', '"global_step": 40'), "field global_step is 40, not the folder's step 4"),
    (lambda t: "[]", "field global_step is None"),
], ids=["bad-json", "other-step", "not-a-state"])
def test_a_trainer_state_edited_by_hand_is_the_users_to_fix(complete, edit, says):
    path = complete / "trainer_state.json"
    path.write_text(edit(path.read_text()))
    with pytest.raises(UserError, match=says) as err:
        what_is_torn(complete, 1, False)
    assert str(path) in str(err.value) and "move" in str(err.value)
    assert complete.is_dir()  # nothing moved


def test_a_checkpoint_of_another_launcher_is_the_users_to_fix(complete):
    with pytest.raises(UserError, match="was saved without DeepSpeed, and this run is"):
        what_is_torn(complete, 2, True)


def test_lw_on_a_checkpoint_edited_by_hand_ends_in_one_line(killed_once, tmp_path):
    run_dir, _ = killed_once
    shutil.copytree(run_dir.parent, tmp_path / "runs")
    state = tmp_path / "runs" / run_dir.name / "checkpoints" / "checkpoint-6" / "trainer_state.json"
    state.write_text("{\n  \"global_step\": six\n}\n")
    result = run_lw(*OVERRIDES, cwd=tmp_path, check=False)
    assert result.returncode == 2, result.stderr[-3000:]
    assert result.stderr.strip().splitlines()[-1] == (
        f"lw: error: {state}, line 2: not valid JSON (Expecting value); a checkpoint edited by hand? repair the file, "
        f"or move {state.parent} out of {state.parent.parent}")
    assert state.parent.is_dir()
