"""`vaelab train` and `--set` as a newcomer types them:
several pairs after one --set, did-you-mean for a misspelt parameter, a small default
preset with the papers' settings one flag away, and Ctrl-C that saves a checkpoint which
`--resume` continues exactly.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from vaelab.cli import app
from vaelab.config import TrialConfig
from vaelab.train_one import TRAIN_PRESETS

runner = CliRunner()
TINY = ["dataset=digits", "depth=2", "latent_dims=8-4", "hidden_dims=32-16", "eval_iw=10", "train_subset=256",
        "train_eval_size=128", "batch_size=64", "eval_every=1", "device=cpu", "compile=off",
        "precision=fp32"]  # exact comparisons across processes: no bf16 kernel choices


def vaelab_command() -> list[str]:
    script = Path(sys.executable).parent / "vaelab"
    return [str(script)] if script.exists() else [sys.executable, "-m", "vaelab.cli"]


def final_json(stdout: str) -> dict[str, Any]:
    return json.loads(stdout.strip().splitlines()[-1])


def test_several_pairs_after_one_set_and_the_repeated_form_agree() -> None:
    one = runner.invoke(app, ["train", "--set", *TINY, "epochs=1"])
    repeated = runner.invoke(app, ["train", *[a for pair in [*TINY, "epochs=1"] for a in ("--set", pair)]])
    assert one.exit_code == 0 and repeated.exit_code == 0, one.output + repeated.output
    assert final_json(one.stdout)["epoch"] == 1 and final_json(one.stdout)["status"] == "finished"
    assert final_json(one.stdout)["test_elbo"] == final_json(repeated.stdout)["test_elbo"]


@pytest.mark.parametrize("args, expected", [
    (["--set", "epoch=2"], "unknown parameter 'epoch' (did you mean 'epochs'?)"),
    (["--set", "dataset=digits", "oops"], "unexpected argument 'oops'"),
    (["--set", "dataset=digits", "depth=9"], "--set depth=9"),  # the second pair is read and checked
    (["--preset", "huge"], "unknown preset; choose one of quick, paper"),
    (["--resume", "nowhere"], "expected checkpoint.pt and config.yaml"),
])
def test_train_argument_mistakes_are_one_clean_line(args: list[str], expected: str) -> None:
    result = runner.invoke(app, ["train", *args])
    assert result.exit_code == 2, result.output
    assert expected in result.output and "Traceback" not in result.output


def test_run_takes_several_pairs_after_one_set(tmp_path: Path, write_study: Any) -> None:
    study = write_study("pairs", """
  axes:
    lr: {grid: [1.0e-3]}
budgets:
  test: {epochs: 1}
""")
    result = runner.invoke(app, ["run", str(study), "--set", "depth=2", "rho=1.5",
                                 "--tracking-uri", f"sqlite:///{tmp_path}/m.db", "--storage", str(tmp_path / "rr")])
    assert result.exit_code == 2 and "rho" in result.output and "Traceback" not in result.output


def test_the_default_preset_is_small_and_paper_is_the_papers_settings() -> None:
    defaults = TrialConfig()
    assert TRAIN_PRESETS["paper"] == {}  # TrialConfig's defaults are the papers'
    assert (defaults.epochs, defaults.eval_iw) == (2000, 5000)
    assert TRAIN_PRESETS["quick"]["epochs"] <= 20 and TRAIN_PRESETS["quick"]["eval_iw"] <= 200
    result = runner.invoke(app, ["train", "--set", *TINY, "eval_every=5", "epochs=1"])
    assert result.exit_code == 0, result.output
    assert "preset quick: epochs=10 eval_iw=100" in result.stderr and "--preset paper" in result.stderr
    assert "final evaluation, test L_K with K = 10" in result.stderr  # said before the long step


def test_ctrl_c_saves_a_checkpoint_that_resume_continues_exactly(tmp_path: Path) -> None:
    out = tmp_path / "out"
    proc = subprocess.Popen([*vaelab_command(), "train", "--set", *TINY, "epochs=100000", "--out", str(out)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 240
    assert proc.stderr is not None
    seen = ""
    while time.monotonic() < deadline:
        line = proc.stderr.readline()
        seen += line
        if line.startswith("epoch 3/"):
            break
    proc.send_signal(signal.SIGINT)
    stdout, rest = proc.communicate(timeout=120)
    stderr = seen + rest
    assert proc.returncode == 130, stderr[-2000:]
    stopped = final_json(stdout)
    assert stopped["status"] == "interrupted"
    epoch = int(stopped["epoch"])
    assert f"interrupted after epoch {epoch}/100000" in stderr and f"vaelab train --resume {out}" in stderr
    assert (out / "checkpoint.pt").is_file() and (out / "config.yaml").is_file()

    target = epoch + 2
    resumed = subprocess.run([*vaelab_command(), "train", "--resume", str(out), "--set", f"epochs={target}"],
                             capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert f"after epoch {epoch}/{target}" in resumed.stderr and f"epoch {epoch + 1}/{target}" in resumed.stderr
    straight = subprocess.run([*vaelab_command(), "train", "--set", *TINY, f"epochs={target}"],
                              capture_output=True, text=True, timeout=300)
    assert straight.returncode == 0, straight.stderr[-2000:]
    continued, uninterrupted = final_json(resumed.stdout), final_json(straight.stdout)
    assert continued["epoch"] == target and continued["status"] == "finished"
    # as if never stopped (fp32: bf16 runs differed by 5e-4 relative across processes)
    for metric in ("train_loss", "test_elbo", "test_ll_iw"):
        assert continued[metric] == pytest.approx(uninterrupted[metric], rel=1e-5), metric
    assert {"model.pt", "unit_kl.json"} <= {p.name for p in out.iterdir()}
    done = subprocess.run([*vaelab_command(), "train", "--resume", str(out)], capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 2 and f"has trained {target} epochs already" in done.stderr


@pytest.mark.parametrize("command, expected", [
    (["run"], ["[default: the study's default_budget]", "[default: ./ray_results]", "--set KEY=VALUE"]),
    (["resume"], ["--shared-storage      Assert that", "--no-report           Skip the report"]),
    (["train"], ["[default: quick]", "--resume"]),
])
def test_help_shows_defaults_and_every_option_has_help(command: list[str], expected: list[str]) -> None:
    result = runner.invoke(app, [*command, "--help"], terminal_width=200)
    assert result.exit_code == 0, result.output
    text = " ".join(result.output.split())
    for piece in expected:
        assert " ".join(piece.split()) in text, piece
