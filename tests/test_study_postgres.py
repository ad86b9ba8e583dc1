"""Against a real PostgreSQL server: CI sets SCALING_LAB_TEST_POSTGRES_URL, e.g.
postgresql+psycopg2://postgres@localhost:5432/scaling_lab_test."""

import os
import uuid

import optuna
import pytest

from scaling_lab.study import load_study, run_study

from tests.helpers import fake_trial, write_study

POSTGRES_URL = os.environ.get("SCALING_LAB_TEST_POSTGRES_URL")


@pytest.mark.skipif(not POSTGRES_URL, reason="SCALING_LAB_TEST_POSTGRES_URL is not set")
def test_postgres_storage(tmp_path):
    name = f"tiny-{uuid.uuid4().hex[:8]}"
    path = write_study(tmp_path, name=name, storage=POSTGRES_URL, search_space={"parameters": {"feature_network": ["fpn", "panet"]}}, repeats=1)
    config = load_study(path)
    frame = run_study(config, trial_function=fake_trial, out=None)
    states = {"fpn": "complete", "panet": "failed"}  # fake_trial fails PANet as a CUDA OOM would
    assert dict(zip(frame["feature_network"], frame["state"])) == states
    stored = optuna.load_study(study_name=name, storage=POSTGRES_URL)
    assert {t.params["feature_network"]: t.user_attrs["record"]["state"] for t in stored.trials} == states
    assert len(run_study(config, trial_function=fake_trial, out=None)) == 2  # resumed from the database
    optuna.delete_study(study_name=name, storage=POSTGRES_URL)
