"""The command line is a contract: other tools parse its JSON and rely on its exit codes."""

import json
import subprocess
import sys

from scaling_lab.cli import main
from scaling_lab.presets import PRESETS


def run_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "scaling_lab.cli", *args], capture_output=True, text=True)


def test_models_lists_every_preset(capsys):
    assert main(["models"]) == 0
    out = capsys.readouterr().out
    assert all(name in out for name in PRESETS)
    assert main(["models", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["efficientdet-d7"]["anchor_scale"] == 5.0


def test_measure_json_has_the_contract_keys(capsys):
    assert main(["measure", "efficientdet-d0", "--set", "resolution=256", "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert {"params", "flops", "flops_elementwise", "activations", "resolution"} <= set(result)
    assert result["resolution"] == 256 and result["params"] == 3_880_067


def test_measure_prints_the_breakdown(capsys):
    assert main(["measure", "efficientnet-b0"]) == 0
    out = capsys.readouterr().out
    assert "5,288,548" in out and "backbone" in out and "classifier" in out


def test_measure_takes_a_rectangular_resolution(capsys):
    assert main(["measure", "efficientnet-b0", "--set", "resolution=[160, 288]", "--no-cache"]) == 0
    out = capsys.readouterr().out
    assert "resolution 160x288" in out and "5,288,548" in out  # the same weights on a wider input


def test_bad_input_exits_2_with_one_message_and_no_traceback():
    for args, message in [
        (["measure", "efficientdet-d9"], "neither a preset nor a spec file"),
        (["measure", "efficientdet-d0", "--set", "fusion=max"], "fusion 'max' is not valid; valid values are sum, weighted, softmax, fast"),
        (["measure", "efficientdet-d0", "--set", "resolution=500"], "divisible by 2^max_level = 128"),
        (["measure", "efficientdet-d0", "--set", "resolution=[384, 650]"], "resolution [384, 650] must be divisible by 2^max_level = 128 on each side"),
    ]:
        result = run_cli(*args)
        assert result.returncode == 2, result.stderr
        assert message in result.stderr and "Traceback" not in result.stderr
