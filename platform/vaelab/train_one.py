"""`vaelab train`: one trial without Ray or MLflow, the way a newcomer first meets vaelab.

- Presets: `quick` (the default) finishes in about a minute on a laptop; `paper` is
  TrialConfig's own defaults, the papers' settings (2000 epochs, L_K with K = 5000).
  `--set` values override either.
- Ctrl-C stops after the current epoch and saves a checkpoint (a second Ctrl-C stops at
  once); `vaelab train --resume DIR` continues from it as if never stopped.
- The final IW evaluation (minutes at K = 5000) says what it does and shows that it is
  still going.

Imports torch (through vaelab.train) only inside `train_one`.
"""

from __future__ import annotations

import signal
import threading
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, Iterator, Optional

import yaml

from vaelab.errors import VaelabError

# The papers' settings are TrialConfig's defaults; `quick` keeps their model and changes
# only how long it trains and how hard the final evaluation works.
TRAIN_PRESETS: dict[str, dict[str, Any]] = {
    "quick": {"epochs": 10, "eval_iw": 100, "eval_every": 5},
    "paper": {},
}
CHECKPOINT_FILE = "checkpoint.pt"
CONFIG_FILE = "config.yaml"
TICK_S = 15.0  # how often a long final evaluation says it is still going

Echo = Callable[[str], None]


def preset_values(name: str) -> dict[str, Any]:
    if name not in TRAIN_PRESETS:
        raise VaelabError(f"--preset {name!r}: unknown preset; choose one of {', '.join(TRAIN_PRESETS)}")
    return dict(TRAIN_PRESETS[name])


def preset_line(name: str) -> str:
    values = " ".join(f"{k}={v}" for k, v in TRAIN_PRESETS[name].items())
    if name == "paper":
        return "preset paper: the papers' settings (2000 epochs, test L_K with K = 5000); --set overrides"
    return f"preset {name}: {values} (the papers' 2000 epochs and K = 5000: --preset paper); --set overrides"


def resume_values(folder: Path) -> dict[str, Any]:
    """The trial configuration saved beside an interrupted training's checkpoint."""
    config, checkpoint = folder / CONFIG_FILE, folder / CHECKPOINT_FILE
    if not checkpoint.is_file() or not config.is_file():
        raise VaelabError(f"--resume {folder}: expected {CHECKPOINT_FILE} and {CONFIG_FILE} there "
                          "(written when `vaelab train` is interrupted or runs with --out)")
    values = yaml.safe_load(config.read_text(encoding="utf-8"))
    if not isinstance(values, dict):
        raise VaelabError(f"{config}: not a trial configuration (a YAML mapping)")
    return values


def interrupted_folder() -> Path:
    """Where an interrupted `vaelab train` without --out keeps its checkpoint."""
    return Path(f"vaelab-train-{time.strftime('%Y%m%d-%H%M%S')}")


@contextmanager
def deferred_interrupt(echo: Echo) -> Iterator[dict[str, bool]]:
    """The first Ctrl-C only sets state["requested"] (the loop stops after the epoch, with
    a consistent checkpoint); a second one interrupts at once."""
    state = {"requested": False}
    if threading.current_thread() is not threading.main_thread():
        yield state
        return

    def on_sigint(signum: int, frame: Any) -> None:
        if state["requested"]:
            raise KeyboardInterrupt
        state["requested"] = True
        echo("stopping after this epoch to save a checkpoint (Ctrl-C again to stop at once, unsaved)")

    previous = signal.signal(signal.SIGINT, on_sigint)
    try:
        yield state
    finally:
        signal.signal(signal.SIGINT, previous)


class _Ticker:
    """Prints `still evaluating (0:00:30)` every TICK_S seconds until stopped."""

    def __init__(self, echo: Echo, every_s: float = TICK_S) -> None:
        self.echo, self.every_s = echo, every_s
        self.stop_event = threading.Event()
        self.thread: Optional[threading.Thread] = None

    def start(self) -> None:
        self.stop()
        self.stop_event = threading.Event()
        self.thread = threading.Thread(target=self._run, args=(self.stop_event, time.monotonic()), daemon=True)
        self.thread.start()

    def _run(self, stop: threading.Event, started: float) -> None:
        while not stop.wait(self.every_s):
            seconds = int(time.monotonic() - started)
            self.echo(f"  still evaluating ({seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d})")

    def stop(self) -> None:
        self.stop_event.set()
        if self.thread is not None:
            self.thread.join()
            self.thread = None


def _save(trainer: Any, config: Any, folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / CONFIG_FILE).write_text(yaml.safe_dump(config.model_dump(mode="json"), sort_keys=False))
    return trainer.save(folder / CHECKPOINT_FILE)


def _load(trainer: Any, folder: Path) -> None:
    try:
        trainer.load(folder / CHECKPOINT_FILE)
    except (RuntimeError, KeyError, ValueError) as err:  # a checkpoint of another model
        raise VaelabError(f"--resume {folder}: the checkpoint does not fit this configuration "
                          f"(change only epochs or evaluation settings with --set): {err}") from err


def train_one(
    config: Any, out: Optional[Path], resume_from: Optional[Path], echo: Echo, epoch_line: Callable[..., str]
) -> tuple[dict[str, Any], str]:
    """Train `config`; returns (final metrics of the trial, status). With `out`, a
    checkpoint is kept there every `checkpoint_every` epochs and the artifacts exported at
    the end; on Ctrl-C the checkpoint goes to `out` (or a new folder) and status is
    `interrupted`."""
    from vaelab.hardware import available_cpus, use_cpu_threads
    from vaelab.train import Trainer

    use_cpu_threads(available_cpus())  # alone: every CPU this process may use
    trainer = Trainer([config])
    if resume_from is not None:
        _load(trainer, resume_from)
        if trainer.epoch >= config.epochs:
            raise VaelabError(f"--resume {resume_from}: its checkpoint has trained {trainer.epoch} epochs "
                              f"already; pass --set epochs=N with N > {trainer.epoch} to train on")
        echo(f"resumed from {resume_from / CHECKPOINT_FILE} after epoch {trainer.epoch}/{config.epochs}")
    ticker = _Ticker(echo)

    def on_final_eval(epoch: int, k: int, n_test: int) -> None:
        echo(f"epoch {epoch}/{config.epochs}: final evaluation, test L_K with K = {k} on {n_test} "
             "test images (the longest step; --set eval_iw=N makes it shorter)")
        ticker.start()

    trainer.on_final_eval = on_final_eval
    final: dict[str, Any] = {}
    status = "running"
    with deferred_interrupt(echo) as interrupt:
        try:
            for report in trainer.run():
                ticker.stop()
                final.update(report.metrics[0])
                status = report.status[0]
                echo(epoch_line(report.epoch, config.epochs, report.metrics[0], status))
                if interrupt["requested"] and not report.is_last:
                    folder = _save(trainer, config, out or interrupted_folder())
                    echo(f"interrupted after epoch {report.epoch}/{config.epochs}: checkpoint {folder}; "
                         f"continue with `vaelab train --resume {folder.parent}`")
                    return final, "interrupted"
                if out is not None and report.epoch % config.checkpoint_every == 0 and not report.is_last:
                    _save(trainer, config, out)
        finally:
            ticker.stop()
    status = "finished" if status == "running" else status
    if out is not None:
        _save(trainer, config, out)
        paths = trainer.export_artifacts(0, out)
        echo(f"artifacts: {', '.join(p.name for p in paths)}, {CONFIG_FILE}, {CHECKPOINT_FILE} -> {out}")
    return final, status
