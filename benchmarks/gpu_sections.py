"""The device sections of benchmarks/gpu_check.py (speed, IW evaluation, paper budget).

Run by gpu_check.py in a worker process: `python gpu_sections.py --plan PLAN.json`. The
plan names the sections, the wall-clock end of the whole check and the sizes; each
section writes `<work>/<section>.json` when it ends (the speed section also after every
measurement), so a section killed at its deadline or by a CUDA fault still leaves what it
measured. A CUDA error poisons the process's context, so after any failed section the
worker exits and gpu_check.py starts a fresh one for the sections left.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import statistics
import sys
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator, Optional

import torch

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE), str(HERE.parent / "platform")]
from eager_baseline import EagerHVAE, train_steps  # noqa: E402

from vaelab.config import TrialConfig  # noqa: E402
from vaelab.data import Dataset, dataset_for, load_dataset  # noqa: E402
from vaelab.evaluate import evaluate_elbo, evaluate_iw  # noqa: E402
from vaelab.hardware import resolve_device  # noqa: E402
from vaelab.train import EpochReport, Trainer  # noqa: E402

SPEED_MODELS = {  # section 2: the deepest and the shallowest model of the ICML grid
    "LVAE+BN d5": dict(inference="lvae", batch_norm=True, depth=5),
    "VAE d1": dict(inference="vae", batch_norm=False, depth=1),
}
COMPILE_MODES = ("off", "compile", "cudagraphs")
PRECISIONS = ("fp32", "bf16")
# What a short lease must measure first: the targets' figures, then the rest of the grid.
SPEED_PRIORITY = [("cudagraphs", "fp32", 1), ("off", "fp32", 1), ("cudagraphs", "fp32", 16),
                  ("cudagraphs", "bf16", 1), ("compile", "fp32", 1), ("cudagraphs", "fp32", 4),
                  ("cudagraphs", "bf16", 16), ("off", "fp32", 16), ("off", "fp32", 4)]
# Section 4: ICML 2016 §3 (2000 epochs, N_t = 200, batch 256, lr 1e-3) and its Table 1 L_5000.
PAPER_VARIANTS = {
    "ladder_bn_wu": {"label": "LADDER+BN+WU", "inference": "ladder", "paper_l5000": -81.87},
    "vae_bn_wu": {"label": "VAE+BN+WU", "inference": "vae", "paper_l5000": -82.14},
}
PAPER_CONFIG = dict(depth=5, batch_norm=True, warmup_epochs=200, epochs=2000, batch_size=256,
                    lr=1e-3, eval_every=10, eval_iw=5000, train_subset=0, seed=0)
# Where a paper run runs, not what it trains: taken from this call when resuming.
WHERE_IT_RUNS = ("device", "data_dir", "compile")
ROWS_PER_IW_PASS = 1 << 20  # as Trainer's final evaluation on CUDA


@dataclass(frozen=True)
class Sizes:
    steps: int  # timed training steps per speed measurement (one epoch)
    batch: int
    cohorts: tuple[int, ...]
    iw_images: Optional[int]  # None: the whole test set
    iw_k: int
    eval_batch: int
    paper: dict[str, Any]  # overrides of PAPER_CONFIG
    paper_max_epochs: Optional[int]  # epochs per call; None: as many as fit
    first_epoch_guess_s: float  # compilation + one epoch, before anything was measured
    compile_guess_s: float


FULL = Sizes(steps=200, batch=256, cohorts=(1, 4, 16), iw_images=None, iw_k=5000, eval_batch=1000,
             paper={}, paper_max_epochs=None, first_epoch_guess_s=90.0, compile_guess_s=90.0)
SMOKE = Sizes(steps=2, batch=32, cohorts=(1, 4), iw_images=100, iw_k=20, eval_batch=100,
              paper=dict(train_subset=256, batch_size=32, eval_every=2, train_eval_size=64,
                         eval_batch_size=100, eval_iw=20),
              paper_max_epochs=3, first_epoch_guess_s=10.0, compile_guess_s=10.0)


class Skipped(Exception):
    """A section (or one measurement) that this machine or the time left cannot run."""


@dataclass
class Plan:
    sections: list[str]
    end: float  # time.time() at which the whole check must be done
    smoke: bool
    dataset: str
    data_dir: Optional[str]
    out: str
    work: str
    resume: Optional[str] = None
    reserve_s: float = 15.0  # kept back at the end for the summary

    @property
    def sizes(self) -> Sizes:
        return SMOKE if self.smoke else FULL

    def left(self) -> float:
        return self.end - self.reserve_s - time.time()


# ----------------------------------------------------------------------------- helpers

def cuda() -> bool:
    return torch.cuda.is_available()


def sync() -> None:
    if cuda():
        torch.cuda.synchronize()


def peak_mb() -> Optional[float]:
    return torch.cuda.max_memory_allocated() / 2 ** 20 if cuda() else None


def fresh_compiler_state() -> None:
    """Each measurement compiles its own loss: drop earlier graphs (and their CUDA-graph
    pools) so the recompile limit and memory never carry over between measurements."""
    torch._dynamo.reset()
    if cuda():
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()


def device_info() -> dict[str, Any]:
    name = torch.cuda.get_device_name() if cuda() else "CPU (no CUDA)"
    return {"device": name, "torch": torch.__version__, "python": sys.version.split()[0],
            "cuda": torch.version.cuda}


def write_json(path: Path, value: Any) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(value, indent=1, default=str))
    os.replace(tmp, path)


def section_deadline(plan: Plan, name: str) -> float:
    """Speed gets 45 % of the time left, IW evaluation 30 % (at most 90 s), the paper
    budget the rest: later sections keep their share even if an earlier one overruns."""
    share, cap = {"speed": (0.45, None), "iw": (0.30, 90.0), "paper": (1.0, None)}[name]
    span = max(0.0, plan.left()) * share
    return time.time() + (min(span, cap) if cap else span)


# ----------------------------------------------------------------------------- section 2

def speed_order(cohorts: tuple[int, ...]) -> list[tuple[str, str, int]]:
    every = [(m, p, s) for m in COMPILE_MODES for p in PRECISIONS for s in cohorts]
    return [c for c in SPEED_PRIORITY if c in every] + [c for c in every if c not in SPEED_PRIORITY]


def first_test_images(data: Dataset, n: int) -> Dataset:
    return dataclasses.replace(data, test_x=data.test_x[:n], test_y=data.test_y[:n])


def speed_data(plan: Plan, device: torch.device) -> Dataset:
    sizes = plan.sizes
    data = load_dataset(plan.dataset, plan.data_dir, device, train_subset=sizes.batch * sizes.steps)
    # the final evaluation of a measurement: one batch of test images
    return first_test_images(data, sizes.eval_batch)


def eager_row(name: str, model: dict, data: Dataset, sizes: Sizes) -> dict[str, Any]:
    depth = model["depth"]
    net = EagerHVAE(data.input_dim, [64, 32, 16, 8, 4][:depth], [512, 256, 128, 64, 32][:depth],
                    model["inference"], model["batch_norm"]).to(data.train_x.device)
    fresh_compiler_state()
    train_steps(net, data.train_x, min(10, sizes.steps), sizes.batch)  # warm-up
    rate = train_steps(net, data.train_x, sizes.steps, sizes.batch)
    return {"model": name, "impl": "eager", "compile": "-", "precision": "fp32", "members": 1,
            "steps_per_s": rate, "member_steps_per_s": rate, "peak_mb": peak_mb(), "status": "ok"}


def vaelab_row(plan: Plan, name: str, model: dict, data: Dataset, mode: str, precision: str,
               members: int) -> dict[str, Any]:
    """Two epochs of `steps` steps: the first warms up (compilation, CUDA-graph capture),
    the Trainer's own steps/s of the second is the figure."""
    configs = [TrialConfig(dataset=plan.dataset, data_dir=plan.data_dir, batch_size=plan.sizes.batch,
                           epochs=2, eval_every=1000, train_eval_size=0, eval_iw=1,
                           eval_batch_size=plan.sizes.eval_batch, device="auto", compile=mode,
                           precision=precision, seed=seed, **model) for seed in range(members)]
    fresh_compiler_state()
    start = time.perf_counter()
    trainer = Trainer(configs, data)
    epochs = trainer.run()
    next(epochs)
    warmup_s, peak = time.perf_counter() - start, peak_mb()  # training only: no evaluation yet
    last = next(epochs).metrics[0]
    rate = last["steps_per_s"]
    return {"model": name, "impl": "vaelab", "compile": mode, "precision": precision,
            "members": members, "steps_per_s": rate, "member_steps_per_s": rate * members,
            "warmup_s": warmup_s, "peak_mb": peak, "train_loss": last["train_loss"],
            "bf16_kept": trainer.bf16 if precision == "bf16" else None, "status": "ok"}


def speed_guess_s(row_mode: str, rows: list[dict], sizes: Sizes) -> float:
    """Seconds a measurement should take: the last warm-up of the same mode, or a guess."""
    seen = [r["warmup_s"] for r in rows if r.get("compile") == row_mode and "warmup_s" in r]
    if seen:
        return seen[-1] * 1.3
    return sizes.compile_guess_s if row_mode != "off" else 10.0


def speed_section(plan: Plan, deadline: float, save: Callable[[dict], None]) -> dict[str, Any]:
    device = resolve_device("auto")
    data = speed_data(plan, device)
    result: dict[str, Any] = {"rows": [], "batch": plan.sizes.batch, "steps": plan.sizes.steps}
    rows = result["rows"]
    for name, model in SPEED_MODELS.items():
        rows.append(_measure(lambda: eager_row(name, model, data, plan.sizes),
                             {"model": name, "impl": "eager", "members": 1}))
        save(result)
    for mode, precision, members in speed_order(plan.sizes.cohorts):
        for name, model in SPEED_MODELS.items():
            base = {"model": name, "impl": "vaelab", "compile": mode, "precision": precision,
                    "members": members}
            if mode != "off" and not cuda():
                rows.append(base | {"status": "skipped: no CUDA"})
            elif time.time() + speed_guess_s(mode, rows, plan.sizes) > deadline:
                rows.append(base | {"status": "skipped: time"})
            else:
                rows.append(_measure(lambda: vaelab_row(plan, name, model, data, mode, precision,
                                                        members), base))
            save(result)
    return result


def _measure(run: Callable[[], dict], base: dict) -> dict[str, Any]:
    """One row; a failed measurement is recorded and the next one still runs."""
    try:
        return run()
    except Exception as err:  # noqa: BLE001 - report every failure, keep measuring
        if "CUDA error" in str(err):
            raise  # the context is gone (not an OOM): let the worker restart
        return base | {"status": f"failed: {type(err).__name__}: {err}".splitlines()[0][:300]}


# ----------------------------------------------------------------------------- section 3

def iw_section(plan: Plan, deadline: float, save: Callable[[dict], None]) -> dict[str, Any]:
    """L_5000 of the 5-layer LVAE+BN on the whole 10,000-image test set, batched (K tiled
    along rows). Untrained weights: this times the evaluation; the value is no likelihood."""
    if not cuda() and not plan.smoke:
        raise Skipped("no CUDA")
    sizes, device = plan.sizes, resolve_device("auto")
    cfg = TrialConfig(dataset=plan.dataset, data_dir=plan.data_dir, inference="lvae",
                      batch_norm=True, depth=5, eval_batch_size=sizes.eval_batch,
                      train_subset=256 if plan.smoke else 0, compile="off")
    data = dataset_for(cfg, device)
    trainer = Trainer([cfg], data)
    trainer.evaluator.prepare(0)  # BN population statistics, eval mode (as before the final L_K)
    x = data.test_x[: sizes.iw_images] if sizes.iw_images else data.test_x
    evaluate_iw(trainer.model, x[:100], 10, trainer.evaluator.generators(0, 4), 100)  # warm-up
    result = {"images": int(x.shape[0]), "k": sizes.iw_k, "runs": []}
    for rows in (ROWS_PER_IW_PASS, 2 * ROWS_PER_IW_PASS):
        if result["runs"] and time.time() + 2 * result["runs"][-1]["seconds"] > deadline:
            break
        if cuda():
            torch.cuda.reset_peak_memory_stats()
        sync()
        start = time.perf_counter()
        value = evaluate_iw(trainer.model, x, sizes.iw_k, trainer.evaluator.generators(0, 4),
                            sizes.eval_batch, max_rows=rows)
        sync()
        seconds = time.perf_counter() - start
        result["runs"].append({"max_rows": rows, "seconds": seconds, "l_k": float(value[0]),
                               "samples_per_s": x.shape[0] * sizes.iw_k / seconds,
                               "peak_mb": peak_mb()})
    best = min(result["runs"], key=lambda r: r["seconds"])
    return result | {"seconds": best["seconds"], "samples_per_s": best["samples_per_s"]}


# ----------------------------------------------------------------------------- section 4

def paper_config(plan: Plan, inference: str) -> TrialConfig:
    """vaelab's defaults with the ICML budget; on a CPU (smoke) uncompiled, since `auto`
    compiles a long CPU trial and a smoke run must take seconds."""
    return TrialConfig(**(PAPER_CONFIG | plan.sizes.paper),
                       dataset=plan.dataset, data_dir=plan.data_dir, inference=inference,
                       device="auto", compile="auto" if cuda() else "off")


def resumed_config(saved: dict[str, Any], cfg: TrialConfig, path: Path) -> tuple[TrialConfig, str]:
    """The run's own configuration, to continue it as it started even if vaelab's defaults
    moved since; refused when it is not this budget and model (a --smoke checkpoint
    resumes only a --smoke run). Returns it and a note of the settings that differ from
    today's defaults."""
    current = cfg.model_dump(mode="json")
    budget = set(PAPER_CONFIG) | set(SMOKE.paper) | {"dataset", "inference"}
    diff = sorted(k for k in budget if saved.get(k) != current[k])
    if diff:
        shown = ", ".join(f"{k}: {saved.get(k)!r} there, {current[k]!r} here" for k in diff)
        raise ValueError(f"--resume {path}: this checkpoint belongs to another run ({shown}); "
                         "pass the folder of the same kind of call (a --smoke checkpoint resumes "
                         "only a --smoke run)")
    config = TrialConfig(**(saved | {k: current[k] for k in WHERE_IT_RUNS}))
    moved = [f"{k}={v!r} (default now {current[k]!r})" for k, v in config.model_dump(mode="json").items()
             if v != current[k]]
    return config, ("with its own settings " + ", ".join(moved)) if moved else ""


def compact_state(trainer: Trainer, extra: dict[str, Any]) -> dict[str, Any]:
    """trainer.state() on the CPU with Adam's two moment buffers in bfloat16: a 5-layer model
    then fits one file the device returns (< 16 MiB: weights 7 MiB fp32 + moments 3.5 MiB
    each). Weights, BN statistics, RNG streams, epoch and step stay exact; Adam's
    load_state_dict casts the moments back to fp32 (relative rounding <= 2^-9)."""
    def to_cpu(value):
        if isinstance(value, torch.Tensor):
            return value.detach().cpu()
        if isinstance(value, dict):
            return {k: to_cpu(v) for k, v in value.items()}
        if isinstance(value, list):
            return [to_cpu(v) for v in value]
        return value

    state = to_cpu(trainer.state())
    for param_state in state["optimizer"]["state"].values():
        for key in ("exp_avg", "exp_avg_sq"):
            param_state[key] = param_state[key].to(torch.bfloat16)
    return state | {"gpu_check": extra}


def verify_checkpoint(path: Path, trainer: Trainer) -> dict[str, Any]:
    """Read the file back as a resume would: exact weights and counters, moments ≈."""
    saved = torch.load(path, map_location="cpu", weights_only=True)
    for key, value in trainer.model.state_dict().items():
        if not torch.equal(saved["model"][key], value.cpu()):
            raise RuntimeError(f"checkpoint {path.name}: {key} differs after the round trip")
    if saved["epoch"] != trainer.epoch or saved["step"] != trainer.step:
        raise RuntimeError(f"checkpoint {path.name}: epoch/step differ after the round trip")
    worst = 0.0
    for pid, param_state in trainer.stepper.optimizer.state_dict()["state"].items():
        for key in ("exp_avg", "exp_avg_sq"):
            ref = param_state[key].cpu()
            err = (saved["optimizer"]["state"][pid][key].float() - ref).abs().max()
            worst = max(worst, float(err / ref.abs().max().clamp_min(1e-30)))
    return {"mb": path.stat().st_size / 2 ** 20, "moments_max_rel_error": worst}


@dataclass
class PaperRun:
    name: str
    trainer: Trainer
    history: list[dict[str, float]]  # evaluated epochs, across every call
    start_epoch: int
    note: str = ""
    epochs: Iterator[EpochReport] = field(init=False)
    train_s: list[float] = field(default_factory=list)  # epochs without evaluation
    eval_s: list[float] = field(default_factory=list)  # epochs with evaluation
    first_s: Optional[float] = None  # the call's first epoch (compilation)
    finished: bool = False

    def __post_init__(self) -> None:
        self.epochs = self.trainer.run()

    def next_epoch_s(self, first_guess_s: float) -> float:
        if self.first_s is None:
            return first_guess_s
        train = max(self.train_s[-3:] or [self.first_s])
        evaluated = (self.trainer.epoch + 1) % self.trainer.config.eval_every == 0
        return train + (self.eval_extra_s() or train) * evaluated

    def eval_extra_s(self) -> Optional[float]:
        if not self.eval_s or not self.train_s:
            return None
        return max(0.0, statistics.median(self.eval_s) - statistics.median(self.train_s))

    def one_epoch(self) -> None:
        start = time.perf_counter()
        report = next(self.epochs, None)
        seconds = time.perf_counter() - start
        if report is None:
            self.finished = True
            return
        if self.first_s is None:
            self.first_s = seconds
        else:
            (self.eval_s if report.evaluated else self.train_s).append(seconds)
        if report.evaluated:
            m = report.metrics[0]
            self.history.append({k: m[k] for k in ("epoch", "beta", "train_loss", "test_elbo",
                                                   "train_elbo", "active_units", "test_ll_iw")
                                 if k in m})
        self.finished = report.is_last or report.status[0] == "diverged"


def open_paper_run(plan: Plan, name: str, data: Dataset) -> PaperRun:
    cfg = paper_config(plan, PAPER_VARIANTS[name]["inference"])
    path = Path(plan.resume) / f"paper_{name}.pt" if plan.resume else None
    if path is None or not path.exists():
        note = f"no {path.name} in {plan.resume}: started at epoch 0" if path else ""
        return PaperRun(name, Trainer([cfg], data), [], 0, note)
    saved = torch.load(path, map_location="cpu", weights_only=True)
    cfg, moved = resumed_config(saved["gpu_check"]["config"], cfg, path)
    trainer = Trainer([cfg], data)
    trainer.load(path)
    return PaperRun(name, trainer, list(saved["gpu_check"]["history"]), trainer.epoch,
                    " ".join(filter(None, [f"resumed from {path.name} at epoch {trainer.epoch}", moved])))


def iw_k_that_fits(plan: Plan, n_test: int, seconds: float) -> int:
    """The largest K <= the paper's 5000 whose L_K fits `seconds` at the measured IW rate."""
    if plan.smoke:
        return plan.sizes.iw_k
    try:
        rate = json.loads((Path(plan.work) / "iw.json").read_text())["samples_per_s"]
    except (OSError, KeyError, ValueError):
        rate = 2e6  # not measured: a cautious guess for one GPU
    return int(max(1, min(5000, rate * seconds / n_test)))


def save_paper_run(plan: Plan, run: PaperRun) -> dict[str, Any]:
    """The checkpoint a later call resumes, written before any final evaluation so that a
    section killed at its deadline still returns the epochs it trained."""
    info, trainer = PAPER_VARIANTS[run.name], run.trainer
    path = Path(plan.out) / f"paper_{run.name}.pt"
    torch.save(compact_state(trainer, {"config": trainer.config.model_dump(mode="json"),
                                       "history": run.history}), path)
    return {"label": info["label"], "paper_l5000": info["paper_l5000"], "note": run.note,
            "start_epoch": run.start_epoch, "epoch": trainer.epoch, "first_epoch_s": run.first_s,
            "checkpoint": path.name, "history": run.history, **verify_checkpoint(path, trainer)}


def evaluate_reached(plan: Plan, run: PaperRun, seconds: float) -> dict[str, Any]:
    """Test ELBO and L_K (K as large as `seconds` allows, at most 5000) of the weights reached."""
    trainer = run.trainer
    if trainer.epoch == 0:
        return {}
    cfg, x, epoch = trainer.config, trainer.data.test_x, trainer.epoch
    k = iw_k_that_fits(plan, x.shape[0], seconds)
    start = time.perf_counter()
    trainer.evaluator.prepare(epoch)  # BN population statistics, eval mode: as the Trainer does
    elbo = evaluate_elbo(trainer.model, x, trainer.evaluator.generators(epoch, 2),
                         cfg.eval_batch_size, cfg.kl_estimator)
    sync()
    elbo_s, start = time.perf_counter() - start, time.perf_counter()
    ll = evaluate_iw(trainer.model, x, k, trainer.evaluator.generators(epoch, 4),
                     cfg.eval_batch_size, max_rows=ROWS_PER_IW_PASS if cuda() else 1 << 16)
    sync()
    return {"test_elbo": float(elbo.elbo[0]), "l_k": float(ll[0]), "k": k,
            "elbo_eval_s": elbo_s, "l_k_s": time.perf_counter() - start}


def projection(run: PaperRun, reached: dict[str, Any]) -> dict[str, Any]:
    """Hours for all 2000 epochs at this call's rates: epochs without evaluation, plus the
    extra of the evaluated ones (every eval_every), plus the final L_5000 (scaled from the
    L_K just timed)."""
    if not run.train_s:
        return {}
    cfg = run.trainer.config
    train = statistics.median(run.train_s)
    extra = run.eval_extra_s()
    estimated = extra is None
    if estimated:  # no evaluated epoch measured: the Trainer's evaluation passes over the
        extra = 2.0 * reached.get("elbo_eval_s", train)  # test and a training subset
    final = reached["l_k_s"] * cfg.eval_iw / reached["k"] if "k" in reached else 0.0
    seconds = cfg.epochs * train + cfg.epochs // cfg.eval_every * extra + final
    return {"epoch_s": train, "eval_extra_s": extra, "eval_extra_estimated": estimated,
            "steps_per_epoch": run.trainer.steps_per_epoch, "projected_h": seconds / 3600}


def paper_section(plan: Plan, deadline: float, save: Callable[[dict], None]) -> dict[str, Any]:
    """The two 5-layer models one after the other, each for half the time left."""
    if not cuda() and not plan.smoke:
        raise Skipped("no CUDA")
    device = resolve_device("auto")
    data = dataset_for(paper_config(plan, "ladder"), device)
    if plan.smoke:
        data = first_test_images(data, plan.sizes.eval_batch)
    result: dict[str, Any] = {}

    def checkpoint(run: PaperRun) -> None:
        result[run.name] = save_paper_run(plan, run)
        save(result)

    names = list(PAPER_VARIANTS)
    for i, name in enumerate(names):
        fresh_compiler_state()
        own_deadline = time.time() + (deadline - time.time()) / (len(names) - i)
        run = train_paper_run(plan, name, data, own_deadline, checkpoint)
        checkpoint(run)
        reached = evaluate_reached(plan, run, max(1.0, own_deadline - time.time()))
        result[name] |= reached | projection(run, reached)
        save(result)
    return result


def first_epoch_guess_s(plan: Plan) -> float:
    """Compilation + CUDA-graph capture + one epoch, before this run measured any: the
    speed section's compiled warm-up of the 5-layer model (200 steps) when it ran."""
    try:
        rows = json.loads((Path(plan.work) / "speed.json").read_text())["rows"]
        warmups = [r["warmup_s"] for r in rows if r.get("model") == "LVAE+BN d5"
                   and r.get("compile") == "cudagraphs" and "warmup_s" in r]
    except (OSError, KeyError, ValueError):
        warmups = []
    return 1.5 * max(warmups) if warmups else plan.sizes.first_epoch_guess_s


def train_paper_run(plan: Plan, name: str, data: Dataset, deadline: float,
                    checkpoint: Callable[[PaperRun], None]) -> PaperRun:
    """As many epochs as fit before `deadline`, keeping a quarter for saving and L_K; a
    checkpoint after every evaluated epoch, so a kill loses at most eval_every epochs."""
    run = open_paper_run(plan, name, data)
    final_s = max(5.0, 0.25 * (deadline - time.time()))
    limit, first_guess = plan.sizes.paper_max_epochs, first_epoch_guess_s(plan)
    while not run.finished and (limit is None or run.trainer.epoch - run.start_epoch < limit):
        if time.time() + run.next_epoch_s(first_guess) + final_s > deadline:
            break
        run.one_epoch()
        if run.history and run.history[-1]["epoch"] == run.trainer.epoch:
            checkpoint(run)
    return run


# ----------------------------------------------------------------------------- worker

SECTIONS: dict[str, Callable[..., dict[str, Any]]] = {
    "speed": speed_section, "iw": iw_section, "paper": paper_section,
}


def run_section(plan: Plan, name: str) -> bool:
    """Run one section and write its JSON; returns False if it failed."""
    work = Path(plan.work)
    deadline = section_deadline(plan, name)
    write_json(work / "current.json", {"section": name, "deadline": deadline})
    out = work / f"{name}.json"
    started = time.time()
    record: dict[str, Any] = {"status": "running", "device": device_info()}

    def save(partial: dict) -> None:
        write_json(out, record | partial | {"seconds": time.time() - started})

    print(f"[gpu_check] {name}: {deadline - started:.0f} s", flush=True)
    try:
        extra = SECTIONS[name](plan, deadline, save)
        record |= extra | {"status": "ok"}
        ok = True
    except Skipped as why:
        record |= {"status": f"skipped: {why}"}
        ok = True
    except Exception as err:  # noqa: BLE001 - recorded; the worker then restarts
        record |= {"status": f"failed: {type(err).__name__}: {err}".splitlines()[0][:400],
                   "traceback": traceback.format_exc()[-3000:]}
        ok = False
    if not ok and out.exists():  # keep what the section measured before it failed
        record = json.loads(out.read_text()) | record
    write_json(out, record | {"seconds": time.time() - started})
    print(f"[gpu_check] {name}: {record['status']} ({time.time() - started:.1f} s)", flush=True)
    return ok


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--plan", required=True)
    plan = Plan(**json.loads(Path(parser.parse_args().plan).read_text()))
    for knob in ("recompile_limit", "cache_size_limit"):  # many measurements, one process
        if hasattr(torch._dynamo.config, knob):
            setattr(torch._dynamo.config, knob, 64)
    for name in plan.sections:
        if not run_section(plan, name):
            sys.exit(3)  # a fresh process for what is left (a CUDA fault poisons this one)


if __name__ == "__main__":
    main()
