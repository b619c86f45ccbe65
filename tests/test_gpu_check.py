"""benchmarks/gpu_check.py: the one-command GPU evidence, proven on the CPU.

The smoke run exercises every section's code path with tiny sizes (the GPU-only parts say
"skipped: no CUDA" here), and the bundle tests make sure that what a bare GPU Python
lacks travels as wheels: a broken import or a missing wheel fails here, not on the GPU machine.
"""

from __future__ import annotations

import ast
import json
import re
import subprocess
import sys
import zipfile
from importlib import metadata
from pathlib import Path

import pytest
import torch
from packaging.requirements import Requirement

from test_data import make_mnist

REPO = Path(__file__).resolve().parents[1]
CHECK = REPO / "benchmarks" / "gpu_check.py"
sys.path.insert(0, str(REPO / "benchmarks"))
import gpu_check  # noqa: E402  (imports no torch: the GPU-side parent process)

FILE_LIMIT = 16 * 2 ** 20  # the largest file a device call returns


def run_check(*args: str) -> subprocess.CompletedProcess:
    # a budget no busy CI machine reaches: the sections' own time limits (for a GPU lease)
    # must not trim what this test checks
    return subprocess.run([sys.executable, str(CHECK), "--budget-min", "60", *args],
                          capture_output=True, text=True, timeout=3000, cwd=REPO)


def sections_of(out: Path) -> dict:
    return json.loads((out / "results.json").read_text())["sections"]


def check_speed(speed: dict) -> None:
    rows = speed["rows"]
    measured = [r for r in rows if r["status"] == "ok"]
    assert {(r["model"], r["impl"]) for r in measured} == {
        (m, i) for m in ("LVAE+BN d5", "VAE d1") for i in ("eager", "vaelab")}
    assert all(r["steps_per_s"] > 0 and r["member_steps_per_s"] == pytest.approx(
        r["steps_per_s"] * r["members"]) for r in measured)
    assert {r["members"] for r in measured if r["impl"] == "vaelab"} == {1, 4}
    assert {r["precision"] for r in measured if r["impl"] == "vaelab"} == {"fp32", "bf16"}
    compiled = [r for r in rows if r.get("compile") in ("compile", "cudagraphs")]
    assert len(compiled) == 2 * 2 * 2 * 2  # modes × precisions × S × models
    if not torch.cuda.is_available():
        assert all(r["status"] == "skipped: no CUDA" for r in compiled)


def check_paper_run(run: dict, out: Path, start: int, end: int) -> None:
    assert (run["start_epoch"], run["epoch"]) == (start, end)
    assert run["test_elbo"] < 0 and run["l_k"] < 0 and run["k"] == 20
    assert run["projected_h"] > 0 and run["epoch_s"] > 0
    checkpoint = out / run["checkpoint"]
    assert checkpoint.stat().st_size < FILE_LIMIT  # the real 5-layer architecture
    assert run["moments_max_rel_error"] < 2 ** -8  # bf16 moments; weights compared exactly
    assert [h["epoch"] for h in run["history"]] == list(range(2, end + 1, 2))


def test_smoke_writes_every_section_and_a_later_call_resumes_the_paper_run(tmp_path):
    make_mnist(tmp_path / "mnist", n_train=600, n_test=100)
    first = tmp_path / "first"
    done = run_check("--smoke", "--out", str(first), "--data-dir", str(tmp_path / "mnist"))
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    sections = sections_of(first)
    assert list(sections) == list(gpu_check.SECTIONS)
    no_cuda = not torch.cuda.is_available()
    assert sections["tests"]["status"] == ("skipped: no CUDA" if no_cuda else "ok")
    assert set(sections["tests"]["counts"]) == ({"skipped"} if no_cuda else {"passed"})
    check_speed(sections["speed"])
    iw = sections["iw"]
    assert iw["status"] == "ok" and iw["images"] == 100 and iw["samples_per_s"] > 0
    for name in ("ladder_bn_wu", "vae_bn_wu"):
        check_paper_run(sections["paper"][name], first, 0, 3)
    grid = sections["grid"]
    assert grid["status"] == "ok" and 0 < grid["grid_20_h"] < grid["grid_60_h"]
    summary = (first / "summary.md").read_text()
    for i, name in enumerate(gpu_check.SECTIONS, start=1):
        assert f"## {i}. {name} — " in summary
    assert "## Targets" in summary and summary in done.stdout

    # a later call continues the same run from the checkpoints the first one returned
    second = tmp_path / "second"
    done = run_check("--smoke", "--sections", "paper", "--out", str(second), "--data-dir",
                     str(tmp_path / "mnist"), "--resume", str(first))
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    paper = sections_of(second)["paper"]
    for name in ("ladder_bn_wu", "vae_bn_wu"):
        check_paper_run(paper[name], second, 3, 6)
        assert "resumed from" in paper[name]["note"]
        before = torch.load(first / f"paper_{name}.pt", weights_only=True)["model"]
        after = torch.load(second / f"paper_{name}.pt", weights_only=True)["model"]
        assert any(not torch.equal(before[k], after[k]) for k in before)  # it trained on


def test_a_checkpoint_resumes_only_the_run_that_wrote_it_with_its_own_settings(tmp_path):
    import gpu_sections

    plan = gpu_sections.Plan(sections=["paper"], end=0.0, smoke=True, dataset="digits",
                             data_dir=None, out=str(tmp_path), work=str(tmp_path))
    cfg = gpu_sections.paper_config(plan, "ladder")
    where = tmp_path / "paper_ladder_bn_wu.pt"
    # written on another machine, when a default (adam_eps) was different: the run goes on
    # with its own adam_eps, and this machine's device and data folder
    saved = cfg.model_dump(mode="json") | {"data_dir": "/elsewhere", "device": "cuda", "adam_eps": 0.5}
    resumed, note = gpu_sections.resumed_config(saved, cfg, where)
    assert (resumed.adam_eps, resumed.device, resumed.data_dir) == (0.5, cfg.device, cfg.data_dir)
    assert "adam_eps=0.5 (default now" in note
    other = cfg.model_dump(mode="json") | {"batch_size": 256, "train_subset": 0}
    with pytest.raises(ValueError, match=r"paper_ladder_bn_wu.pt: .*batch_size: 256 there, 32 here"):
        gpu_sections.resumed_config(other, cfg, where)


@pytest.mark.parametrize("argv, says", [
    (["--sections", "speed,warp"], "--sections speed,warp: unknown ['warp']"),
    (["--budget-min", "0"], "--budget-min 0.0: the budget must be positive"),
    (["--resume", "{tmp}"], "--resume {tmp}: no paper_*.pt checkpoint there"),
])
def test_bad_arguments_exit_2_with_one_paragraph(tmp_path, capsys, argv, says):
    argv = [a.format(tmp=tmp_path) for a in argv]
    assert gpu_check.main(argv + ["--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert says.format(tmp=tmp_path) in err and "Traceback" not in err
    assert not (tmp_path / "out").exists()


def test_a_python_without_pydantic_and_without_wheels_is_told_to_run_gpu_bundle(tmp_path):
    # -I -S: no site-packages, as a bare interpreter would lack pydantic and yaml
    done = subprocess.run([sys.executable, "-I", "-S", str(CHECK), "--smoke", "--wheels",
                           str(tmp_path), "--out", str(tmp_path / "out")],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 2 and "Traceback" not in done.stderr
    assert "has no pydantic, yaml" in done.stderr and "make gpu-bundle" in done.stderr


def test_wheels_unpack_once_into_an_importable_folder(tmp_path):
    wheel = tmp_path / "wheels" / "tinypkg-1.0-py3-none-any.whl"
    wheel.parent.mkdir()
    with zipfile.ZipFile(wheel, "w") as archive:
        archive.writestr("tinypkg/__init__.py", "ANSWER = 42\n")
        archive.writestr("tinypkg-1.0.dist-info/METADATA", "Name: tinypkg\nVersion: 1.0\n")
    site = gpu_check.unpack_wheels([wheel], tmp_path / "site")
    stamp = (site / ".unpacked").stat().st_mtime_ns
    assert gpu_check.unpack_wheels([wheel], site) == site
    assert (site / ".unpacked").stat().st_mtime_ns == stamp  # not unpacked twice
    done = subprocess.run([sys.executable, "-I", "-c", "import sys; sys.path.insert(0, sys.argv[1]); "
                           "import tinypkg; print(tinypkg.ANSWER)", str(site)],
                          capture_output=True, text=True, timeout=60)
    assert done.stdout.strip() == "42", done.stderr


# ----------------------------------------------------------------------------- the bundle's coverage

def canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def requirement_closure(names: list[str], absent: tuple[str, ...] = ()) -> set[str]:
    """The distributions `names` pull in, from this environment's metadata (no network),
    not going through the `absent` ones."""
    seen: set[str] = set()
    todo = [canonical(n) for n in names]
    while todo:
        name = todo.pop()
        if name in seen or name in absent:
            continue
        seen.add(name)
        try:
            requires = metadata.requires(name) or []
        except metadata.PackageNotFoundError:
            continue
        for line in requires:
            req = Requirement(line)
            if req.marker is None or req.marker.evaluate({"extra": ""}):
                todo.append(canonical(req.name))
    return seen


def loaded_local_files() -> list[Path]:
    """The repository's modules that gpu_check runs on the device: the worker (vaelab.train
    and whatever of vaelab it loads, the eager baseline), the gpu test files, conftest."""
    code = ("import sys, json; sys.path[:0] = ['platform', 'benchmarks', 'tests']; "
            "import conftest, gpu_check, gpu_sections, "
            + ", ".join(p.stem for p in gpu_check.gpu_test_files()) + "; "
            "print(json.dumps([getattr(m, '__file__', None) for m in list(sys.modules.values())]))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=300, cwd=REPO)
    assert done.returncode == 0, done.stderr[-2000:]
    files = [Path(f) for f in json.loads(done.stdout.splitlines()[-1]) if f]
    return [f for f in files if f.is_relative_to(REPO) and not f.is_relative_to(REPO / ".venv")]


def direct_imports(path: Path) -> set[str]:
    """Top-level names of the absolute imports a file runs when imported (module and class
    level; a function's lazy import, such as conftest's `import ray`, runs only if called)."""
    names: set[str] = set()
    todo = list(ast.parse(path.read_text()).body)
    while todo:
        node = todo.pop()
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)):
            continue
        if isinstance(node, ast.Import):
            names |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module.split(".")[0])
        todo += list(ast.iter_child_nodes(node))
    return names


def needed_distributions() -> set[str]:
    """What pip would install for the third-party packages our device-side code imports
    (optional imports inside torch or numpy are the GPU image's business)."""
    files = loaded_local_files()
    assert any(f.name == "train.py" for f in files) and any(f.name == "gpu_sections.py" for f in files)
    local = {f.stem for f in files} | {"vaelab"}
    owners = metadata.packages_distributions()
    direct, unknown = set(), []
    for name in set().union(*(direct_imports(f) for f in files)):
        if name in sys.stdlib_module_names or name in local:
            continue
        if name not in owners:
            unknown.append(name)
            continue
        direct |= {canonical(d) for d in owners[name]}
    assert not unknown, f"imports of no installed distribution: {unknown}"
    return requirement_closure(sorted(direct))


def test_the_bundle_covers_every_module_the_device_lacks():
    needed = needed_distributions()
    assert {"pydantic", "pydantic-core", "torch"} <= needed
    on_device = requirement_closure(list(gpu_check.DEVICE_PACKAGES), gpu_check.DEVICE_LACKS)
    listed = [Requirement(line).name for line in gpu_check.WHEEL_LIST.read_text().splitlines()
              if line.strip() and not line.startswith("#")]
    bundled = requirement_closure(listed)
    assert {"pydantic", "pydantic-core"} <= needed - on_device
    assert needed - on_device <= bundled, f"not bundled: {sorted(needed - on_device - bundled)}"
    # and `make gpu-bundle` downloads exactly that list
    recipe = (REPO / "Makefile").read_text().split("\ngpu-bundle:")[1].split("\n\n")[0]
    assert "-r benchmarks/gpu_wheels.txt" in recipe and "--python-version" in recipe
