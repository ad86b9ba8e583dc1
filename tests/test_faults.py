"""Faults of the machine, not of the input or the configuration: a full disk (for real on a
tmpfs where the test can mount one, and through a write that raises ENOSPC at a chosen call),
SIGTERM, a study whose every trial failed, and ``run --retry-failed``. A trial the machine stopped
is recorded as interrupted and runs again on the next ``run``; a configuration's own failure stays
failed."""

from __future__ import annotations

import errno
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import optuna
import pandas as pd
import pytest
import torch

from scaling_lab import cli
from scaling_lab.files import read_parquet
from scaling_lab.study import load_study, run_study
from scaling_lab.study.results import is_interrupted

from tests.helpers import fake_trial, subprocess_env, write_study

CHECKPOINT_FLOATS = 50_000  # 200 KB per checkpoint: a 1 MiB disk fills within a few trials


def checkpointing_trial(spec, task, budget, report=None, seed=0, checkpoint_dir=None, **kwargs):
    """``fake_trial`` that first writes its checkpoint the way the trainer does."""
    from scaling_lab.train.checkpoint import save_checkpoint

    save_checkpoint(Path(checkpoint_dir) / "checkpoint.pt", {"seed": seed, "weights": torch.zeros(CHECKPOINT_FLOATS)})
    return fake_trial(spec, task, budget, report, seed, checkpoint_dir, **kwargs)


@pytest.fixture
def cli_run(tmp_path, monkeypatch):
    """``scaling-lab run`` of the tiny study (12 trials, PANet's fail as a simulated OOM), with
    ``checkpointing_trial``; returns (exit status, stderr)."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr("scaling_lab.study.session.default_trial_function", lambda: checkpointing_trial)
    monkeypatch.setattr("scaling_lab.report._write_pngs", lambda figures, folder: [])

    def run(capsys, *extra: str, run_dir: Path | None = None) -> tuple[int, str]:
        path = write_study(tmp_path, **({"run_dir": str(run_dir)} if run_dir else {}))
        status = cli.main(["run", str(path), *extra])
        return status, capsys.readouterr().err

    return run


def stored_trials(run_dir: Path) -> list[optuna.trial.FrozenTrial]:
    return optuna.load_study(study_name="tiny", storage=f"sqlite:///{run_dir / 'study.db'}").get_trials()


def record_state(trial: optuna.trial.FrozenTrial) -> str | None:
    return trial.user_attrs.get("record", {}).get("state")


def assert_every_trial_once(run_dir: Path) -> None:
    frame = read_parquet(run_dir / "results.parquet")
    assert len(frame) == 12 and set(frame["state"]) == {"complete", "failed"}
    assert frame.groupby(["config_id", "seed"]).size().max() == 1
    assert (frame[frame["state"] == "failed"]["feature_network"] == "panet").all()  # only the configuration's own failures


def test_full_disk_during_a_trial_interrupts_it_and_the_next_run_completes(cli_run, tmp_path, capsys, monkeypatch):
    saves = []
    real_save = torch.save

    def save_until_full(obj, handle, *args, **kwargs):
        saves.append(1)
        if len(saves) == 3:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real_save(obj, handle, *args, **kwargs)

    monkeypatch.setattr(torch, "save", save_until_full)
    status, err = cli_run(capsys)
    assert status == 2 and "Traceback" not in err and len(err.strip().splitlines()) == 1, err
    assert f"{tmp_path / 'run' / 'checkpoints'}/" in err and "no space left on the device" in err and "(trial 2)" in err
    trials = stored_trials(tmp_path / "run")
    assert [record_state(t) for t in trials] == ["complete", "complete", "interrupted"] + [None] * 9  # the rest wait
    assert trials[2].state == optuna.trial.TrialState.FAIL and "no space left" in trials[2].user_attrs["reason"]
    assert len(read_parquet(tmp_path / "run" / "results.parquet")) == 2  # an interrupted trial has no row

    monkeypatch.setattr(torch, "save", real_save)  # space freed
    status, err = cli_run(capsys)
    assert status == 0, err
    assert_every_trial_once(tmp_path / "run")


@pytest.fixture
def small_disk(tmp_path):
    """A 1 MiB tmpfs (as root, where mounting is allowed); grown by ``grow()``; unmounted after."""
    mount_point = tmp_path / "disk"
    mount_point.mkdir()
    try:
        made = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1M", "tmpfs", str(mount_point)], capture_output=True)
    except OSError as exc:  # no mount command
        made = subprocess.CompletedProcess([], 1, b"", str(exc).encode())
    if made.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here ({made.stderr.decode().strip()}); the ENOSPC write test covers the code")
    try:
        yield mount_point, lambda: subprocess.run(["mount", "-o", "remount,size=64M", str(mount_point)], check=True)
    finally:
        subprocess.run(["umount", "-l", str(mount_point)], check=False)


def test_full_disk_for_real_exits_2_naming_the_folder_and_keeps_the_database(cli_run, small_disk, capsys):
    disk, grow = small_disk
    run_dir = disk / "run"
    status, err = cli_run(capsys, run_dir=run_dir)
    assert status == 2 and "Traceback" not in err and "no space left on the device" in err and str(disk) in err, err
    states = {record_state(t) for t in stored_trials(run_dir)}  # the database opens, every trial consistent
    assert states <= {"complete", "failed", "interrupted", None}
    grow()
    status, err = cli_run(capsys, run_dir=run_dir)
    assert status == 0, err
    assert_every_trial_once(run_dir)


SIGTERM_SCRIPT = """
import sys
import scaling_lab.study.session
from tests.helpers import fake_trial
scaling_lab.study.session.default_trial_function = lambda: fake_trial
from scaling_lab import cli
sys.exit(cli.main(["run", {path!r}]))
"""


def test_sigterm_stops_a_run_like_ctrl_c(tmp_path):
    path = write_study(tmp_path, task={"synthetic": {"train_images": 16}, "epochs": 2})
    script = SIGTERM_SCRIPT.format(path=str(path))
    env = subprocess_env(FAKE_TRIAL_SLEEP="1", OMP_NUM_THREADS="1")
    process = subprocess.Popen([sys.executable, "-c", script], env=env, cwd=tmp_path, stderr=subprocess.PIPE, text=True)
    table = tmp_path / "run" / "results.parquet"
    deadline = time.time() + 120
    while time.time() < deadline and not (table.exists() and len(read_parquet(table)) >= 1):
        time.sleep(0.2)
    time.sleep(0.5)  # inside the next trial's first epoch
    process.send_signal(signal.SIGTERM)
    stopped = time.time()
    _, err = process.communicate(timeout=30)
    assert process.returncode == 128 + signal.SIGTERM and time.time() - stopped < 5, err
    assert "terminated (SIGTERM)" in err and "Traceback" not in err
    trials = stored_trials(tmp_path / "run")
    assert not [t for t in trials if t.state == optuna.trial.TrialState.RUNNING]
    assert len([t for t in trials if is_interrupted(t)]) == 1  # the trial that ran: no outcome, so it runs again
    frame = run_study(load_study(path), trial_function=fake_trial, out=None)
    assert len(frame) == 12 and frame.groupby(["config_id", "seed"]).size().max() == 1


def test_report_of_a_study_whose_every_trial_failed_lists_the_failures(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr("scaling_lab.study.session.default_trial_function", lambda: fake_trial)
    monkeypatch.setattr("scaling_lab.report._write_pngs", lambda figures, folder: [])
    path = write_study(tmp_path, search_space={"parameters": {"feature_network": ["panet"]}})
    assert cli.main(["run", str(path)]) == 0  # the report at the end of run
    assert cli.main(["report", str(tmp_path / "run"), "--no-png", "--out", str(tmp_path / "again")]) == 0
    for page in (tmp_path / "run" / "report" / "index.html", tmp_path / "again" / "index.html"):
        text = page.read_text()
        assert "No trial is complete" in text and text.count("CUDA out of memory (simulated)") >= 2


def test_retry_failed_runs_the_failed_trials_again_and_their_retries_replace_them(tmp_path, capsys, monkeypatch):
    """A configuration's own failure stays failed on a plain run; ``--retry-failed`` runs it
    again (interrupted, then resumed, it is still one retry), and the table holds each
    (configuration, seed) once."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr("scaling_lab.report._write_pngs", lambda figures, folder: [])
    path = write_study(tmp_path)
    run_dir = tmp_path / "run"
    monkeypatch.setattr("scaling_lab.study.session.default_trial_function", lambda: fake_trial)
    assert cli.main(["run", str(path)]) == 0
    first = read_parquet(run_dir / "results.parquet")
    assert (first["state"] == "failed").sum() == 4
    assert cli.main(["run", str(path)]) == 0  # a plain run keeps the failures
    pd.testing.assert_frame_equal(read_parquet(run_dir / "results.parquet"), first)

    calls = []

    def interrupted_once_then_fixed(spec, *args, **kwargs):
        calls.append(spec.feature_network)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return fake_trial(spec.replace(feature_network="bifpn"), *args, **kwargs)

    monkeypatch.setattr("scaling_lab.study.session.default_trial_function", lambda: interrupted_once_then_fixed)
    assert cli.main(["run", str(path), "--retry-failed"]) == 130
    assert cli.main(["run", str(path)]) == 0  # the interrupted retry runs again without the flag
    assert calls == ["panet"] * 5
    frame = read_parquet(run_dir / "results.parquet")
    assert len(frame) == 12 and set(frame["state"]) == {"complete"}
    assert frame.groupby(["config_id", "seed"]).size().max() == 1
    kept = first[first["state"] == "complete"].set_index("trial_id")["finished"]
    assert frame.set_index("trial_id").loc[kept.index, "finished"].equals(kept)  # complete trials were not run again
    assert "--retry-failed: 4 failed trial(s) enqueued again" in capsys.readouterr().out


def test_a_long_plan_prints_its_progress(tmp_path, monkeypatch):
    """Each enqueued trial is a database transaction (about 14 ms on SQLite): ``repeats: 10000``
    took minutes without a line; now every ``PLANNING_PROGRESS_EVERY`` trials say so."""
    import io

    monkeypatch.setattr("scaling_lab.study.planning.PLANNING_PROGRESS_EVERY", 5)
    out = io.StringIO()
    run_study(load_study(write_study(tmp_path)), trial_function=fake_trial, out=out)
    lines = [line for line in out.getvalue().splitlines() if "planning" in line]
    assert lines == [f"[tiny] planning group main: {done}/12 trials enqueued" for done in (5, 10, 12)]
