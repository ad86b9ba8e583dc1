"""Several workers on one PostgreSQL study (CI sets SCALING_LAB_TEST_POSTGRES_URL): every
(configuration, seed) runs exactly once, all workers use the same step-2 values, and the trials
of a worker killed with SIGKILL (a local worker or a Ray driver) are failed and run again."""

import os
import signal
import subprocess
import sys
import time
import uuid
from datetime import datetime
from pathlib import Path

import optuna
import pytest

from scaling_lab.study import load_study, run_study

from tests.helpers import adaptive_study, noisy_trial, seeds_per_network, subprocess_env, write_study

POSTGRES_URL = os.environ.get("SCALING_LAB_TEST_POSTGRES_URL")
_STORAGES: list = []
pytestmark = pytest.mark.skipif(not POSTGRES_URL, reason="SCALING_LAB_TEST_POSTGRES_URL is not set")

WORKER = """
import sys
from scaling_lab.study import load_study, run_study
from tests import helpers
from tests.helpers import {trial} as trial_function
if {ray!r}:
    from ray import cloudpickle
    cloudpickle.register_pickle_by_value(helpers)
run_study(load_study({path!r}, run_dir={run_dir!r}), backend={backend!r}, trial_function=trial_function, out=None)
"""
GROUPS = [
    {"name": "search", "search_space": {"parameters": {"channels": {"type": "grid", "values": [16, 24, 32]}}}},
    {"name": "scaled", "search_space": {"parameters": {"channels": {"type": "best", "group": "search"}, "feature_network": ["fpn", "bifpn"]}}},
]
PLANNED = (3 + 2) * 2  # configurations x 2 seeds


def _study(tmp_path: Path) -> Path:
    path = write_study(tmp_path, name=f"workers-{uuid.uuid4().hex[:8]}", storage=POSTGRES_URL, search_space=None, groups=GROUPS)
    return path


def _worker(path: Path, run_dir: Path, backend: str = "local", sleep: float = 0.3, trial: str = "fake_trial") -> subprocess.Popen:
    env = subprocess_env(
        FAKE_TRIAL_SLEEP=str(sleep), SCALING_LAB_HEARTBEAT_INTERVAL="1", SCALING_LAB_HEARTBEAT_GRACE="4", RAY_AUTH_MODE="disabled"
    )
    script = WORKER.format(path=str(path), run_dir=str(run_dir), backend=backend, ray=backend == "ray", trial=trial)
    return subprocess.Popen([sys.executable, "-c", script], env=env, stderr=subprocess.PIPE, text=True)


def _finish(process: subprocess.Popen, timeout: float = 240) -> None:
    _, error = process.communicate(timeout=timeout)
    assert process.returncode == 0, error[-3000:]


def _storage() -> optuna.storages.RDBStorage:
    """One connection pool for the test's polling (a URL per call would open a pool per call)."""
    if not _STORAGES:
        _STORAGES.append(optuna.storages.RDBStorage(POSTGRES_URL))
    return _STORAGES[0]


def _check_every_pair_once(name: str) -> optuna.Study:
    study = optuna.load_study(study_name=name, storage=_storage())
    trials = study.get_trials(deepcopy=False)
    done = [t for t in trials if t.state == optuna.trial.TrialState.COMPLETE]
    pairs = [(t.user_attrs["config_id"], t.user_attrs["seed"]) for t in done]
    assert len(pairs) == len(set(pairs)) == PLANNED
    assert not [t for t in trials if t.state in (optuna.trial.TrialState.WAITING, optuna.trial.TrialState.RUNNING)]
    best = study.user_attrs["best:search"]["values"]
    scaled = [t for t in done if t.user_attrs["group"] == "scaled"]
    assert {t.user_attrs["record"]["spec"]["channels"] for t in scaled} == {best["channels"]} == {32}
    return study


@pytest.mark.slow
def test_two_workers_started_together_run_each_pair_once(tmp_path):
    path = _study(tmp_path)
    workers = [_worker(path, tmp_path / f"run{i}") for i in range(2)]
    for worker in workers:
        _finish(worker)
    study = _check_every_pair_once(load_study(path).name)
    optuna.delete_study(study_name=study.study_name, storage=_storage())


@pytest.mark.slow
def test_two_workers_on_an_adaptive_study_plan_each_round_once(tmp_path):
    """Each round is planned once, under the planning lock, whichever worker finishes it: the
    seeds are those of one worker alone, none twice."""
    path = adaptive_study(tmp_path / "shared", name=f"adaptive-{uuid.uuid4().hex[:8]}", storage=POSTGRES_URL)
    workers = [_worker(path, tmp_path / f"run{i}", sleep=0.2, trial="noisy_trial") for i in range(2)]
    for worker in workers:
        _finish(worker)
    alone = run_study(load_study(adaptive_study(tmp_path / "alone")), trial_function=noisy_trial, out=None)
    study = optuna.load_study(study_name=load_study(path).name, storage=_storage())
    done = [t for t in study.get_trials(deepcopy=False) if t.state == optuna.trial.TrialState.COMPLETE]
    pairs = [(t.user_attrs["config_id"], t.user_attrs["seed"]) for t in done]
    assert len(pairs) == len(set(pairs)) == len(alone) == 15
    networks = {}
    for trial in done:
        networks.setdefault(trial.user_attrs["record"]["spec"]["feature_network"], []).append(trial.user_attrs["seed"])
    assert {network: sorted(seeds) for network, seeds in networks.items()} == seeds_per_network(alone)
    assert study.user_attrs["adaptive_repeats"]["stop"] == "max"
    optuna.delete_study(study_name=study.study_name, storage=_storage())


def _kill_mid_trial(process: subprocess.Popen, name: str, started_before: subprocess.Popen | None = None) -> None:
    """SIGKILL ``process`` while it trains a trial (and has finished two). ``started_before``:
    a worker held back (SIGSTOP) until then, so the running trial is surely the victim's."""
    if started_before is not None:
        started_before.send_signal(signal.SIGSTOP)
    deadline = time.time() + 120
    while time.time() < deadline:
        time.sleep(0.1)
        try:
            study = optuna.load_study(study_name=name, storage=_storage())
        except KeyError:
            continue
        trials = study.get_trials(deepcopy=False)
        now = datetime.now()
        just_started = [t for t in trials if t.state == optuna.trial.TrialState.RUNNING and (now - t.datetime_start).total_seconds() < 0.5]
        if sum(t.state == optuna.trial.TrialState.COMPLETE for t in trials) >= 2 and just_started:
            break  # a trial of about a second has just started: the kill lands inside it
    process.send_signal(signal.SIGKILL)
    process.wait()
    if started_before is not None:
        started_before.send_signal(signal.SIGCONT)


@pytest.mark.slow
def test_a_killed_worker_trial_is_failed_and_run_again_by_the_other(tmp_path):
    path = _study(tmp_path)
    name = load_study(path).name
    victim = _worker(path, tmp_path / "victim", sleep=1.0)
    survivor = _worker(path, tmp_path / "survivor", sleep=1.0)
    _kill_mid_trial(victim, name, started_before=survivor)
    _finish(survivor)
    study = _check_every_pair_once(name)
    interrupted = [t for t in study.trials if t.state == optuna.trial.TrialState.FAIL and "state" not in t.user_attrs.get("record", {})]
    assert interrupted, "the killed worker's running trial was neither failed nor run again"
    optuna.delete_study(study_name=name, storage=_storage())


@pytest.mark.slow
def test_a_killed_ray_driver_trials_are_run_again(tmp_path):
    pytest.importorskip("ray")
    path = _study(tmp_path)
    name = load_study(path).name
    driver = _worker(path, tmp_path / "run", backend="ray", sleep=1.0)
    _kill_mid_trial(driver, name)
    _finish(_worker(path, tmp_path / "run", backend="ray", sleep=0.2), timeout=300)
    study = _check_every_pair_once(name)
    interrupted = [t for t in study.trials if t.state == optuna.trial.TrialState.FAIL and "state" not in t.user_attrs.get("record", {})]
    assert interrupted, [(t.number, t.state.name, t.user_attrs.get("record", {}).get("state")) for t in study.trials]
    optuna.delete_study(study_name=name, storage=_storage())
