"""Writing files: a crash at any point of ``atomic_write`` leaves the old file whole."""

from __future__ import annotations

import os

import pytest

from scaling_lab import files
from scaling_lab.files import atomic_write, atomic_write_text


class Crash(Exception):
    pass


def test_a_crash_between_write_and_rename_leaves_the_old_file_whole(tmp_path, monkeypatch):
    target = tmp_path / "results.csv"
    target.write_text("old table\n")

    def crash(*args):
        raise Crash("power lost before the rename")

    monkeypatch.setattr(files.os, "replace", crash)
    with pytest.raises(Crash):
        atomic_write_text(target, "new table\n")
    assert target.read_text() == "old table\n"
    assert os.listdir(tmp_path) == ["results.csv"]  # no temporary file left behind


def test_a_crash_halfway_through_writing_leaves_the_old_file_whole(tmp_path):
    target = tmp_path / "study.json"
    target.write_text('{"finished": true}\n')

    def half_then_crash(temporary: str) -> None:
        with open(temporary, "w") as handle:
            handle.write('{"fini')
        raise Crash("killed while writing")

    with pytest.raises(Crash):
        atomic_write(target, half_then_crash)
    assert target.read_text() == '{"finished": true}\n' and os.listdir(tmp_path) == ["study.json"]
    atomic_write_text(target, "{}\n")
    assert target.read_text() == "{}\n" and oct(target.stat().st_mode & 0o777) == "0o644"
