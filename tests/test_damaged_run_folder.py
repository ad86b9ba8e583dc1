"""A run folder's derived files (study.json, results.parquet, results.csv) damaged one at a time:
``status``, ``report``, ``derive`` and a resuming ``run`` rebuild them from the study database
(same trials, same metrics) with a one-line warning, or exit 2 naming the database when it is
the database that is missing or damaged."""

import json
import shutil
from pathlib import Path

import pandas as pd
import pytest

from scaling_lab import cli
from scaling_lab.study import load_study, run_study

from tests.helpers import fake_trial, write_study

DAMAGES = {
    "empty parquet": ("results.parquet", b""),
    "truncated parquet": ("results.parquet", None),  # the first half of the real file
    "parquet that is text": ("results.parquet", b"trial_id,state\n0,complete\n"),
    "csv garbage": ("results.csv", b"\x00\xff garbage \x01\n;;;\n"),
    "csv without state": ("results.csv", b"trial_id,AP\n0,0.5\n"),
    "study.json garbage": ("study.json", b"{not json"),
    "study.json objectives []": ("study.json", "objectives=[]"),
    "study.json objectives string": ("study.json", "objectives=AP"),
    "study.json a list": ("study.json", b"[1, 2]"),
}
COMMANDS = ("status", "report", "run", "derive")
# A resuming run is slower (it opens the study and writes the report): one damage of each file.
CASES = [(damage, command) for damage in DAMAGES for command in COMMANDS if command != "run"] + [
    ("truncated parquet", "run"), ("csv garbage", "run"), ("study.json objectives []", "run"),
]


@pytest.fixture(scope="module")
def finished_study(tmp_path_factory):
    """One tiny finished study (2 feature networks x 1 seed, fake trainer), copied by each test."""
    folder = tmp_path_factory.mktemp("finished")
    path = write_study(folder, search_space={"parameters": {"feature_network": ["fpn", "bifpn"]}}, repeats=1)
    run_study(load_study(path), trial_function=fake_trial, out=None)
    return folder


@pytest.fixture
def study_copy(finished_study, tmp_path, monkeypatch):
    shutil.copytree(finished_study, tmp_path / "study")
    monkeypatch.setattr("scaling_lab.study.session.default_trial_function", lambda: fake_trial)
    monkeypatch.setattr("scaling_lab.report._write_pngs", lambda figures, folder: None)  # kaleido is slow and not tested here
    monkeypatch.chdir(tmp_path)  # reports go to reports/<name>/
    return tmp_path / "study"


def damage(run_dir: Path, file: str, content) -> None:
    path = run_dir / file
    if content is None:
        data = path.read_bytes()
        path.write_bytes(data[: len(data) // 2])
    elif isinstance(content, str):
        key, value = content.split("=")
        info = json.loads(path.read_text())
        info[key] = json.loads(value) if value.startswith("[") else value
        path.write_text(json.dumps(info))
    else:
        path.write_bytes(content)


def command_args(command: str, folder: Path) -> list[str]:
    run_dir = folder / "run"
    if command == "run":
        return ["run", str(folder / "tiny.yaml"), "--run-dir", str(run_dir)]
    if command == "report":
        return ["report", str(run_dir), "--no-png", "--out", str(folder / "report")]
    return [command, str(run_dir)]


def table(run_dir: Path, name: str) -> pd.DataFrame:
    path = run_dir / name
    frame = pd.read_parquet(path) if name.endswith(".parquet") else pd.read_csv(path)
    return frame[["trial_id", "state", "AP", "config_id"]].sort_values("trial_id").reset_index(drop=True)


@pytest.mark.parametrize(("damage_name", "command"), CASES)
def test_damaged_derived_file_is_rebuilt_from_the_database(study_copy, damage_name, command, capsys):
    run_dir = study_copy / "run"
    file, content = DAMAGES[damage_name]
    before = {name: table(run_dir, name) for name in ("results.parquet", "results.csv")}
    info_before = json.loads((run_dir / "study.json").read_text())
    damage(run_dir, file, content)
    damaged_bytes = (run_dir / file).read_bytes()

    status = cli.main(command_args(command, study_copy))
    err = capsys.readouterr().err
    assert "Traceback" not in err
    warnings = [line for line in err.splitlines() if line.startswith("warning:")]
    assert len(warnings) == 1 and str(run_dir / file) in warnings[0], err
    assert "rebuilt from" in warnings[0] or "this run rewrites it from" in warnings[0]
    if command == "derive":  # the tiny study has no alpha/beta grid: derive refuses, after the rebuild
        assert status == 2 and "no group of this study searches alpha and beta" in err
    else:
        assert status == 0, err
    assert (run_dir / f"{file}.damaged").read_bytes() == damaged_bytes
    for name, frame in before.items():
        pd.testing.assert_frame_equal(table(run_dir, name), frame)
    info_after = json.loads((run_dir / "study.json").read_text())
    assert {k: info_after[k] for k in ("name", "objectives", "planned_trials", "finished")} == {
        k: info_before[k] for k in ("name", "objectives", "planned_trials", "finished")
    }


@pytest.mark.parametrize("command", ("status", "report", "derive"))
def test_missing_results_table_is_rebuilt_not_read_as_no_trials(study_copy, command, capsys):
    run_dir = study_copy / "run"
    before = table(run_dir, "results.parquet")
    (run_dir / "results.parquet").unlink()
    cli.main(command_args(command, study_copy))
    assert "results.parquet was missing; rebuilt from" in capsys.readouterr().err
    pd.testing.assert_frame_equal(table(run_dir, "results.parquet"), before)


@pytest.mark.parametrize("command", COMMANDS)
@pytest.mark.parametrize("database", ("missing", "damaged"))
def test_damaged_file_without_its_database_exits_2_naming_the_database(study_copy, command, database, capsys):
    run_dir = study_copy / "run"
    if database == "missing":
        (run_dir / "study.db").unlink()
    else:
        (run_dir / "study.db").write_bytes(b"this is not sqlite" * 100)
    damage(run_dir, "results.parquet", b"")
    assert cli.main(command_args(command, study_copy)) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1, err
    assert f"{run_dir / 'study.db'}: the study database is {database}" in err
    assert (run_dir / "results.parquet").read_bytes() == b""  # nothing moved or overwritten
    assert not (run_dir / "results.parquet.damaged").exists()


def test_run_refuses_to_start_over_results_whose_database_is_missing(study_copy, capsys):
    run_dir = study_copy / "run"
    (run_dir / "study.db").unlink()
    assert cli.main(command_args("run", study_copy)) == 2
    err = capsys.readouterr().err
    assert f"{run_dir / 'study.db'}: the study database is missing, but {run_dir} holds results" in err
    assert not (run_dir / "study.db").exists()


def test_status_reads_an_intact_folder_without_warnings(study_copy, capsys):
    assert cli.main(["status", str(study_copy / "run"), "--json"]) == 0
    out, err = capsys.readouterr()
    assert json.loads(out)["complete"] == 2 and err == ""


def test_study_json_of_a_database_without_its_record_is_refused_clearly(study_copy, capsys):
    """A database written before study.json's content was kept in it cannot rebuild study.json."""
    import optuna

    from scaling_lab.study.results import INFO_ATTR

    run_dir = study_copy / "run"
    optuna.load_study(study_name="tiny", storage=f"sqlite:///{run_dir / 'study.db'}").set_user_attr(INFO_ATTR, None)
    (run_dir / "study.json").write_text("{broken")
    assert cli.main(["status", str(run_dir)]) == 2
    err = capsys.readouterr().err
    assert "holds the trials but not the study record that study.json is rebuilt from" in err and "scaling-lab run" in err
    assert (run_dir / "study.json").read_text() == "{broken"


def _foreign_sqlite(path: Path) -> None:
    import sqlite3

    path.unlink()
    with sqlite3.connect(path) as connection:
        connection.execute("CREATE TABLE invoices (id INTEGER PRIMARY KEY, total REAL)")
        connection.execute("INSERT INTO invoices VALUES (1, 9.5)")


def _truncated(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def _folder(path: Path) -> None:
    path.unlink()
    path.mkdir()
    (path / "inside").write_text("x")


UNUSABLE_DATABASES = {
    "empty": (lambda path: path.write_bytes(b""), "is empty (0 bytes)"),
    "another application's": (_foreign_sqlite, "is another application's SQLite database (tables invoices), not an Optuna study"),
    "truncated": (_truncated, "is damaged (database disk image is malformed)"),
    "a folder": (_folder, "is a folder, not a database file"),
}


def _snapshot(folder: Path) -> dict[str, bytes | None]:
    return {str(path.relative_to(folder)): path.read_bytes() if path.is_file() else None for path in sorted(folder.rglob("*"))}


@pytest.mark.parametrize("command", COMMANDS)
@pytest.mark.parametrize("database", UNUSABLE_DATABASES)
def test_unusable_database_is_refused_before_anything_is_written(study_copy, command, database, capsys, monkeypatch):
    """A 0-byte, foreign, truncated study.db or a folder in its place: exit 2 with one line naming
    it, whether or not the derived files look intact; nothing trains, nothing is written."""
    run_dir = study_copy / "run"
    trained = []
    monkeypatch.setattr("scaling_lab.study.session.default_trial_function", lambda: lambda *a, **k: trained.append(1) or fake_trial(*a, **k))
    make, words = UNUSABLE_DATABASES[database]
    make(run_dir / "study.db")
    before = _snapshot(study_copy)
    assert cli.main(command_args(command, study_copy)) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1, err
    assert f"{run_dir / 'study.db'}: the study database {words}" in err and "Nothing was read or written" in err
    assert _snapshot(study_copy) == before and trained == []


@pytest.mark.parametrize("command", ("status", "run"))
def test_derived_file_that_is_a_folder_is_damaged_and_rebuilt(study_copy, command, capsys):
    run_dir = study_copy / "run"
    before = table(run_dir, "results.parquet")
    _folder(run_dir / "results.parquet")
    assert cli.main(command_args(command, study_copy) + (["--json"] if command == "status" else [])) == 0
    out, err = capsys.readouterr()
    assert f"{run_dir / 'results.parquet'} was damaged (a folder, not a file)" in err
    assert (run_dir / "results.parquet.damaged" / "inside").read_text() == "x"
    pd.testing.assert_frame_equal(table(run_dir, "results.parquet"), before)
    if command == "status":
        assert json.loads(out)["complete"] == 2
