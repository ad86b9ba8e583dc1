"""Bad input, as a table: each row is the input (files it writes), the command, the exit status
and the words the one-paragraph message must contain. Never a traceback, never a false success.

Categories: paths that cannot be used, values out of range, YAML/JSON beyond the readers'
limits, image data and annotations that are not what they claim, a damaged run folder without
its database, and the six kinds of bad input handled before this table existed."""

from __future__ import annotations

import json
import os
import shutil
import struct
import zlib
from pathlib import Path
from typing import Callable

import numpy as np
import pytest
from PIL import Image

from scaling_lab import cli
from scaling_lab.study import load_study, run_study

from tests.helpers import TINY_BASE, fake_trial, write_study

TINY_SPEC = {**TINY_BASE, "min_level": 3, "max_level": 5}


# --- inputs -----------------------------------------------------------------------------------


def spec_file(folder: Path, text: str, name: str = "spec.yaml") -> str:
    path = folder / name
    path.write_text(text)
    return str(path)


def deep_yaml(folder: Path) -> str:
    return spec_file(folder, "[" * 5000 + "]" * 5000, "deep.yaml")


def alias_bomb(folder: Path) -> str:
    lines = ['a0: &a0 ["x", "x", "x", "x", "x", "x", "x", "x", "x", "x"]']
    lines += [f"a{i}: &a{i} [{', '.join([f'*a{i - 1}'] * 10)}]" for i in range(1, 9)]
    return spec_file(folder, "\n".join(lines) + "\n", "bomb.yaml")


def png_bytes(width: int, height: int) -> bytes:
    """A PNG whose header declares ``width`` x ``height`` with almost no data: a decompression bomb
    when large (the pixels would only be produced by decoding)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"")) + chunk(b"IEND", b"")


def coco_folder(folder: Path, change: Callable[[dict, Path], None]) -> str:
    """<folder>/data/{train,val}/images + annotations.json: two 64x64 images with one box each;
    ``change(annotations, images_dir)`` damages the train split (the value "@deep@" becomes an
    array nested 5000 deep)."""
    root = folder / "data"
    for split in ("train", "val"):
        images_dir = root / split / "images"
        images_dir.mkdir(parents=True)
        data = {
            "images": [{"id": i, "file_name": f"{i}.png", "width": 64, "height": 64} for i in (1, 2)],
            "annotations": [{"id": i, "image_id": i, "category_id": 1, "bbox": [8, 8, 20, 20]} for i in (1, 2)],
            "categories": [{"id": 1, "name": "thing"}],
        }
        for image in data["images"]:
            Image.fromarray(np.zeros((64, 64, 3), np.uint8)).save(images_dir / image["file_name"])
        if split == "train":
            change(data, images_dir)
        (root / split / "annotations.json").write_text(json.dumps(data).replace('"@deep@"', "[" * 5000 + "]" * 5000))
    return str(root)


def truncate(path: Path) -> None:
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(path)
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


DATA_DAMAGE: dict[str, tuple[Callable[[dict, Path], None], list[str]]] = {
    "bomb": (lambda d, images: (images / "1.png").write_bytes(png_bytes(100_000, 100_000)), ["1.png (image id 1)", "megapixel limit", "decompression bomb"]),
    "undecodable": (lambda d, images: (images / "1.png").write_bytes(b"not an image"), ["1.png (image id 1) cannot be read as an image"]),
    "truncated": (lambda d, images: truncate(images / "1.png"), ["1.png (image id 1) cannot be read as an image"]),
    "size mismatch": (lambda d, images: Image.new("RGB", (32, 48)).save(images / "1.png"), ["1.png (image id 1) is 32x48", "annotation says 64x64"]),
    "missing": (lambda d, images: (images / "2.png").unlink(), ["2.png (image id 2) does not exist"]),
    "box outside": (lambda d, images: d["annotations"][0].update(bbox=[100, 8, 10, 10]), ["annotation 1 (image 1)", "[100, 8, 10, 10] lies entirely outside its image"]),
    "negative size": (lambda d, images: d["annotations"][1].update(bbox=[8, 8, -4, 10]), ["annotation 2 (image 2)", "[8, 8, -4, 10] has a width or height that is not positive"]),
    "unknown category": (lambda d, images: d["annotations"][0].update(category_id=7), ["annotation 1", "unknown category_id 7", "valid category ids are 1"]),
    "duplicate image id": (lambda d, images: d["images"].append(dict(d["images"][0])), ["images id 1 appears twice"]),
    "NaN box": (lambda d, images: d["annotations"][0].update(bbox=[8, float("nan"), 20, 20]), ["annotation file", "annotations.json: annotation 1 (image 1)", "[8, nan, 20, 20] has a coordinate that is not finite"]),
    "infinite box": (lambda d, images: d["annotations"][1].update(bbox=[8, 8, float("inf"), 20]), ["annotation 2 (image 2)", "[8, 8, inf, 20] has a coordinate that is not finite"]),
    "file_name outside": (lambda d, images: outside_image(d, images, "../../outside.png"), ["outside.png (image id 1) leaves the images folder (resolved to", "/data/outside.png)"]),
    "absolute file_name": (lambda d, images: outside_image(d, images, str(images.parent / "elsewhere.png")), ["elsewhere.png (image id 1) leaves the images folder"]),
    "float pixels": (lambda d, images: Image.fromarray(np.zeros((64, 64), np.float32)).save(images / "1.png", format="TIFF"), ["1.png (image id 1) has pixel mode 'F'", "cannot be converted to 8-bit RGB"]),
}


def outside_image(data: dict, images: Path, file_name: str) -> None:
    """Image 1 listed by a file_name that leaves the images folder (the file exists there)."""
    target = Path(os.path.normpath(images / file_name))
    Image.fromarray(np.zeros((64, 64, 3), np.uint8)).save(target)
    data["images"][0]["file_name"] = file_name


def checkpoints_file(folder: Path) -> str:
    (folder / "run").mkdir()
    (folder / "run" / "checkpoints").write_text("x")
    return str(folder / "run")


def without_val_annotations(root: str) -> str:
    path = Path(root) / "val" / "annotations.json"
    path.write_text(json.dumps({**json.loads(path.read_text()), "annotations": []}))
    return root


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory):
    """One tiny finished study (fake trainer), copied by the rows that need a run folder."""
    folder = tmp_path_factory.mktemp("finished")
    path = write_study(folder, search_space={"parameters": {"feature_network": ["fpn", "bifpn"]}}, repeats=1)
    run_study(load_study(path), trial_function=fake_trial, out=None)
    return folder / "run"


def run_folder(folder: Path, finished: Path, damage: Callable[[Path], None] = lambda run: None) -> str:
    shutil.copytree(finished, folder / "run")
    damage(folder / "run")
    return str(folder / "run")


def no_database(run: Path) -> None:
    (run / "study.db").unlink()
    (run / "results.parquet").write_bytes(b"PAR1 garbage")


# One row: (name, arguments given the test folder and the finished run folder, exit status, words).
Row = tuple[str, Callable[[Path, Path], list[str]], int, list[str]]
ROWS: list[Row] = [
    # Paths that cannot be used: refused before anything trains.
    ("run --run-dir is a file", lambda t, f: ["run", str(write_study(t)), "--run-dir", spec_file(t, "x", "file")], 2, ["--run-dir", "file: is a file, not a folder"]),
    ("run --run-dir unwritable", lambda t, f: ["run", str(write_study(t)), "--run-dir", "/proc/scaling-lab-run"], 2, ["--run-dir /proc/scaling-lab-run: cannot be written"]),
    ("study run_dir under a file", lambda t, f: ["run", str(write_study(t, run_dir=str(Path(spec_file(t, "x", "file")) / "run")))], 2, ["tiny.yaml: run_dir", "is a file, so the folder cannot be created"]),
    ("train --checkpoint-dir is a file", lambda t, f: ["train", spec_file(t, json.dumps(TINY_SPEC)), "--checkpoint-dir", spec_file(t, "x", "file")], 2, ["--checkpoint-dir", "is a file, not a folder"]),
    ("report --out is a file", lambda t, f: ["report", run_folder(t, f), "--no-png", "--out", spec_file(t, "x", "file")], 2, ["--out", "is a file, not a folder"]),
    ("report folder is a file", lambda t, f: ["report", run_folder(t, f, lambda run: (run / "report").write_text("x")), "--no-png"], 2, ["report folder", "/run/report: is a file, not a folder"]),
    ("run checkpoints is a file", lambda t, f: ["run", str(write_study(t)), "--run-dir", checkpoints_file(t)], 2, ["checkpoints folder", "/checkpoints: is a file, not a folder"]),
    ("study name too long", lambda t, f: ["run", str(write_study(t, name="n" * 300, run_dir=""))], 2, ["tiny.yaml: run_dir", "is 300 bytes, over the file system's limit of 255 bytes per name"]),
    ("run --run-dir ''", lambda t, f: ["run", str(write_study(t)), "--run-dir", ""], 2, ["argument --run-dir", "an empty path is not a folder"]),
    ("train --checkpoint-dir ''", lambda t, f: ["train", "efficientdet-d0", "--checkpoint-dir", " "], 2, ["argument --checkpoint-dir", "an empty path is not a folder"]),
    ("report --out ''", lambda t, f: ["report", run_folder(t, f), "--out", ""], 2, ["argument --out", "an empty path is not a folder"]),
    ("report --out unwritable", lambda t, f: ["report", run_folder(t, f), "--no-png", "--out", "/proc/scaling-lab-report"], 2, ["--out /proc/scaling-lab-report: cannot be written"]),
    # Values that cannot be right: one range table for flags and study keys.
    ("train --lr nan", lambda t, f: ["train", "efficientdet-d0", "--lr", "nan"], 2, ["argument --lr", "'nan' is not valid", "finite number > 0"]),
    ("train --lr -0.1", lambda t, f: ["train", "efficientdet-d0", "--lr", "-0.1"], 2, ["argument --lr", "'-0.1'", "> 0"]),
    ("train --lr inf", lambda t, f: ["train", "efficientdet-d0", "--lr", "inf"], 2, ["argument --lr", "'inf'"]),
    ("train --epochs 0", lambda t, f: ["train", "efficientdet-d0", "--epochs", "0"], 2, ["argument --epochs", "'0'", "integer >= 1"]),
    ("train --seed -1", lambda t, f: ["train", "efficientdet-d0", "--seed", "-1"], 2, ["argument --seed", "'-1'"]),
    ("train --batch-size 0", lambda t, f: ["train", "efficientdet-d0", "--batch-size", "0"], 2, ["argument --batch-size", "'0'"]),
    ("measure --batch-size -2", lambda t, f: ["measure", "efficientdet-d0", "--batch-size", "-2"], 2, ["argument --batch-size", "'-2'"]),
    ("run --trials 0", lambda t, f: ["run", str(write_study(t)), "--trials", "0"], 2, ["argument --trials", "'0'"]),
    ("status --top 0", lambda t, f: ["status", run_folder(t, f), "--top", "0"], 2, ["argument --top", "'0'"]),
    ("task.lr -1", lambda t, f: ["run", str(write_study(t)), "--set", "task.lr=-1"], 2, ["tiny.yaml", "task lr -1.0 is not valid", "> 0"]),
    ("task.lr nan", lambda t, f: ["run", str(write_study(t)), "--set", "task.lr=.nan"], 2, ["tiny.yaml", "task.lr", "finite"]),
    ("task.weight_decay -0.1", lambda t, f: ["run", str(write_study(t)), "--set", "task.weight_decay=-0.1"], 2, ["task weight_decay -0.1 is not valid", ">= 0"]),
    ("task.ema 1", lambda t, f: ["run", str(write_study(t)), "--set", "task.ema=1"], 2, ["task ema 1.0 is not valid", "in [0, 1)"]),
    ("task.warmup_epochs -1", lambda t, f: ["run", str(write_study(t)), "--set", "task.warmup_epochs=-1"], 2, ["task warmup_epochs -1.0 is not valid"]),
    ("task.bad_data", lambda t, f: ["run", str(write_study(t)), "--set", "task.bad_data=ignore"], 2, ["bad_data 'ignore' is not valid; valid values are error, skip"]),
    ("train --lr 1e6 diverges", lambda t, f: ["train", spec_file(t, json.dumps(TINY_SPEC)), "--data", coco_folder(t, lambda d, i: None), "--lr", "1e6", "--batch-size", "1", "--epochs", "2", "--no-latency"], 2, ["training diverged: the loss reached", "in epoch 1", "lr 1000000.0"]),
    # Documents beyond the readers' limits.
    ("deeply nested spec", lambda t, f: ["measure", deep_yaml(t)], 2, ["deep.yaml", "nested"]),
    ("alias bomb spec", lambda t, f: ["measure", alias_bomb(t)], 2, ["bomb.yaml", "aliases expanded", "1,000,000"]),
    ("recursive anchor", lambda t, f: ["measure", spec_file(t, "a: &a [*a]\n")], 2, ["spec.yaml", "refers to itself"]),
    ("duplicate YAML key", lambda t, f: ["run", spec_file(t, "name: tiny\nbase: efficientdet-d0\ntask:\n  epochs: 3\n  lr: 0.1\n  epochs: 30\n", "study.yaml")], 2, ["study.yaml: key 'epochs' appears twice in one mapping (lines 4 and 6)"]),
    ("database password", lambda t, f: ["run", str(write_study(t, storage="postgresql+psycopg2://optuna:s3cret@127.0.0.1:1/db"))], 2, ["storage 'postgresql+psycopg2://optuna:***@127.0.0.1:1/db' cannot be opened"]),
    ("oversized spec", lambda t, f: ["measure", spec_file(t, "# " + "x" * (5 * 1024 * 1024))], 2, ["spec.yaml", "larger than 4 MiB"]),
    ("deeply nested study", lambda t, f: ["run", spec_file(t, "name: x\nbase: " + "[" * 3000 + "]" * 3000, "study.yaml")], 2, ["study.yaml", "nested"]),
    ("deeply nested annotations", lambda t, f: ["train", spec_file(t, json.dumps(TINY_SPEC)), "--data", coco_folder(t, lambda d, i: d.update(info="@deep@"))], 2, ["annotations.json", "nested"]),
    # Data that is not what it claims: an error naming the file (task bad_data: skip drops and counts them).
    *[
        (f"image data: {name}", lambda t, f, change=change: ["train", spec_file(t, json.dumps(TINY_SPEC)), "--data", coco_folder(t, change), "--no-latency"], 2, words)
        for name, (change, words) in DATA_DAMAGE.items()
    ],
    ("val split without annotations", lambda t, f: ["train", spec_file(t, json.dumps(TINY_SPEC)), "--data", without_val_annotations(coco_folder(t, lambda d, i: None)), "--no-latency"], 2, ["validation annotation file", "val/annotations.json holds no boxes", "every AP would be NaN"]),
    # A damaged run folder whose database is gone: refused, naming the database.
    ("damaged results, no database", lambda t, f: ["status", run_folder(t, f, no_database)], 2, ["study.db: the study database is missing", "results.parquet", "cannot be rebuilt"]),
    ("resume over results without database", lambda t, f: ["run", str(write_study(t)), "--run-dir", run_folder(t, f, lambda r: (r / "study.db").unlink())], 2, ["study.db: the study database is missing, but", "holds results of an earlier run"]),
    # The six handled before: unknown preset, bad spec value, missing study file, non-UTF-8 file, bad study key, bad device.
    ("unknown preset", lambda t, f: ["measure", "efficientdet-d9"], 2, ["'efficientdet-d9' is neither a preset nor a spec file"]),
    ("bad spec value", lambda t, f: ["measure", "efficientdet-d0", "--set", "fusion=max"], 2, ["fusion 'max' is not valid; valid values are"]),
    ("missing study file", lambda t, f: ["run", str(t / "nowhere.yaml")], 2, ["nowhere.yaml' does not exist"]),
    ("non-UTF-8 spec", lambda t, f: ["measure", (t / "latin1.yaml").write_bytes(b"fusion: \xe9\n") and str(t / "latin1.yaml")], 2, ["latin1.yaml: not valid UTF-8"]),
    ("bad study key", lambda t, f: ["run", str(write_study(t)), "--set", "sampler.type=annealing"], 2, ["sampler.type: 'annealing' is not valid"]),
    ("bad device", lambda t, f: ["train", spec_file(t, json.dumps(TINY_SPEC)), "--device", "gpu0"], 2, ["gpu0", "not a torch device"]),
]


def invoke(args: list[str], capsys) -> tuple[int, str]:
    try:
        status = cli.main(args)
    except SystemExit as exit_:  # argparse's own errors (a flag's type) exit 2 too
        status = exit_.code
    return status, capsys.readouterr().err


@pytest.mark.parametrize(("name", "arguments", "status", "words"), ROWS, ids=[row[0] for row in ROWS])
def test_bad_input_is_a_clear_error(name, arguments, status, words, tmp_path, finished_run, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr("scaling_lab.study.session.default_trial_function", lambda: fake_trial)
    code, err = invoke(arguments(tmp_path, finished_run), capsys)
    assert code == status, err
    assert "Traceback" not in err and "s3cret" not in err
    message = err.strip().splitlines()[-1]  # argparse prints its usage first
    for word in words:
        assert word in message, f"{word!r} not in {message!r}"


# --- what the table cannot show --------------------------------------------------------------


def test_unusable_output_folders_are_refused_before_training(tmp_path, capsys, monkeypatch):
    """The study must not train for an hour and then fail to write: nothing runs at all. The
    folder checked is the one the report goes to (``report_dir_for`` the run folder)."""
    monkeypatch.chdir(tmp_path)
    calls = []
    monkeypatch.setattr("scaling_lab.study.session.default_trial_function", lambda: calls.append(1) or fake_trial)
    study = str(write_study(tmp_path))
    (tmp_path / "runs").mkdir()
    blocker = Path(spec_file(tmp_path, "x", "reports"))  # reports/<run folder name> cannot be made
    code, err = invoke(["run", study, "--run-dir", "runs/tiny-cpu"], capsys)
    assert code == 2 and "report folder" in err and "reports/tiny-cpu" in err
    assert calls == [] and not (tmp_path / "runs" / "tiny-cpu").exists() and blocker.read_text() == "x"
    blocker.unlink()
    (tmp_path / "elsewhere").mkdir()
    (tmp_path / "elsewhere" / "report").write_text("x")  # outside runs/ the report goes to <run folder>/report
    code, err = invoke(["run", study, "--run-dir", "elsewhere"], capsys)
    assert code == 2 and "elsewhere/report: is a file" in err
    assert calls == [] and not (tmp_path / "elsewhere" / "study.db").exists()


@pytest.mark.parametrize("name", DATA_DAMAGE)
def test_bad_image_data_is_skipped_and_counted_with_bad_data_skip(name, tmp_path):
    from scaling_lab.data import CocoDetection
    from scaling_lab.train.trainer import skipped_data_notes

    root = Path(coco_folder(tmp_path, DATA_DAMAGE[name][0]))
    dataset = CocoDetection(root / "train" / "images", root / "train" / "annotations.json", bad_data="skip")
    stats = dataset.stats
    assert stats.images_skipped + stats.annotations_skipped + stats.degenerate_dropped >= 1
    assert len(dataset) == 2 - stats.images_skipped + (name == "duplicate image id")
    note = skipped_data_notes(dataset, dataset)[0]
    assert note.startswith("train data: skipped") and "bad_data: skip" in note


def test_16_bit_image_keeps_its_range(tmp_path):
    """PIL's own conversion clips 16-bit grey at 255 (a gradient turns white); the loader scales it."""
    from scaling_lab.data.transforms import load_image_resized

    gradient = np.tile(np.linspace(0, 65535, 64).astype(np.uint16), (64, 1))
    Image.fromarray(gradient).save(tmp_path / "deep.png")
    assert Image.open(tmp_path / "deep.png").mode == "I;16"
    pixels, scale = load_image_resized(tmp_path / "deep.png", 64)
    assert scale == 1 and pixels.shape == (64, 64, 3)
    np.testing.assert_array_equal(pixels[0, :, 0], np.round(gradient[0] / 65535 * 255).astype(np.uint8))


def test_bad_classification_image_is_skipped_and_counted(tmp_path):
    from scaling_lab.data import ImageFolderClassification
    from scaling_lab.errors import ScalingLabError

    for name in ("a", "b"):
        (tmp_path / name).mkdir()
        for index in range(2):
            Image.new("RGB", (16, 16)).save(tmp_path / name / f"{index}.png")
    (tmp_path / "a" / "1.png").write_bytes(png_bytes(100_000, 100_000))
    with pytest.raises(ScalingLabError, match=r"a/1\.png .*megapixel limit"):
        ImageFolderClassification(tmp_path)
    dataset = ImageFolderClassification(tmp_path, bad_data="skip")
    assert len(dataset) == 3 and dataset.images_skipped == 1 and dataset.labels.tolist() == [0, 1, 1]


def test_diverging_trial_fails_with_its_reason_and_the_study_goes_on(tmp_path):
    """A learning rate far too high for one configuration: that trial fails with the epoch and
    the loss in its error, the others complete."""
    from dataclasses import replace

    from scaling_lab.train.trainer import run_trial

    def trial(spec, task, budget, **kwargs):
        return run_trial(spec, replace(task, lr=1e6) if spec.feature_network == "fpn" else task, budget, **kwargs)

    path = write_study(
        tmp_path,
        base={**TINY_BASE, "resolution": 64, "min_level": 3, "max_level": 5},
        search_space={"parameters": {"feature_network": ["fpn", "bifpn"]}},
        task={"synthetic": {"train_images": 8, "val_images": 4, "image_size": 64, "max_object_size": 48}, "batch_size": 4, "epochs": 2, "latency": False},
        repeats=1,
    )
    frame = run_study(load_study(path), trial_function=trial, out=None).set_index("feature_network")
    assert frame.loc["bifpn", "state"] == "complete"
    assert frame.loc["fpn", "state"] == "failed"
    assert "TrainingDiverged: training diverged: the loss reached" in frame.loc["fpn", "error"]
    assert "in epoch 1" in frame.loc["fpn", "error"]


def test_license_is_an_spdx_expression():
    import tomllib

    project = tomllib.loads((Path(__file__).parents[1] / "pyproject.toml").read_text())["project"]
    assert project["license"] == "Apache-2.0"
    assert any(requirement.startswith("hypothesis") for requirement in project["optional-dependencies"]["dev"])


def test_kaleido_failure_is_one_line_with_what_to_install(tmp_path, caplog, monkeypatch):
    import importlib.util

    from scaling_lab import report

    import plotly.graph_objects as go

    def write_images(*args, **kwargs):
        raise RuntimeError("Kaleido failed to start Chrome.\n  Traceback-like detail\n  more detail")

    figures = [("figure-1", go.Figure())]
    monkeypatch.setattr(importlib.util, "find_spec", lambda name: object())
    monkeypatch.setattr("plotly.io.write_images", write_images)
    assert report._write_pngs(figures, tmp_path / "figures") == []
    (record,) = caplog.records
    assert "\n" not in record.getMessage()
    assert "kaleido failed (Kaleido failed to start Chrome.)" in record.getMessage() and "apt-get install -y chromium" in record.getMessage()


def test_ray_output_is_quiet(monkeypatch):
    import logging

    from scaling_lab.study.ray_output import RAY_AUTH_LOGGER, quiet_ray

    monkeypatch.delenv("RAY_AIR_NEW_OUTPUT", raising=False)
    quiet_ray()
    import os

    assert os.environ["RAY_AIR_NEW_OUTPUT"] == "0"  # no "Number of trials 9223372036854775807" banner
    assert logging.getLogger(RAY_AUTH_LOGGER).getEffectiveLevel() == logging.ERROR
