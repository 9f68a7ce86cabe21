"""An installed rlprompt works without the repository: the `rlprompt` command, packaged configs.

Fast tests: the command's dispatch, `--help`, one-line errors, a user's `--config-dir`, thin scripts,
and what the wheel ships. The slow test installs the wheel into a fresh venv in tmp_path and runs
`rlprompt score`, a 1-step `rlprompt train`, `export`, `transfer` and `accelerate launch -m
rlprompt.train` from a directory outside the checkout.

Why the fresh venv reuses the checkout's third-party packages: a full dependency install copies
torch, transformers and the packaged models again (minutes, gigabytes). Instead the venv gets
rlprompt from the wheel only (`pip install --no-deps`) and a .pth line that appends this
interpreter's site-packages (torch 2.13.0 from the wheel on disk, the --no-deps model packages of
requirements-models.txt) *after* its own. A plain path line in a .pth does not run that folder's
own .pth files, so the checkout's editable rlprompt stays invisible; the test asserts that
rlprompt, its configs and tasks load from the new venv, and that every requirement the wheel
declares is met.
"""

from __future__ import annotations

import ast
import os
import shutil
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import pytest

from rlprompt.commands import COMMANDS
from rlprompt.commands import main as rlprompt_main

REPO = Path(__file__).resolve().parents[1]
SOURCES = ("pyproject.toml", "README.md", "rlprompt", "rewards", "tasks", "configs")  # what a build reads


def errors(text: str) -> list[str]:
    return [line for line in text.splitlines() if line.startswith("error:")]


def run_main(args: list[str], capsys, monkeypatch) -> tuple[int, str, str]:
    monkeypatch.setattr(sys, "argv", ["rlprompt", *args])  # run_hydra hands sys.argv to Hydra
    code = 0
    try:
        rlprompt_main(args)
    except SystemExit as stop:
        code = int(stop.code or 0)
    out, err = capsys.readouterr()
    return code, out, err


# ---------------------------------------------------------------------- the command, in-process


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["trian"], ["unknown command 'trian'", "Did you mean 'train'?", "train, compare, score, export, transfer"]),
        ([], ["no command given", "Valid commands: train, compare, score, export, transfer"]),
        (["train", "task=nope"], ["unknown task 'nope'", "Valid task names: car_sales, saas_renewal"]),
        (["score", "policy=token"], ["unknown policy 'token'", "Valid policy names: components, lora, tokens"]),
        (["compare", "optimizer.lrr=1"], ["'optimizer.lrr'", "Did you mean 'optimizer.lr'?"]),
        (["transfer", "+prompt_set=[x]"], ["'prompt_set'", "Valid fields: task, target"]),
    ],
)  # fmt: skip
def test_bad_commands_and_overrides_give_one_error_line_with_the_choices(args, expected, capsys, monkeypatch):
    code, _, err = run_main(args, capsys, monkeypatch)
    assert code == 2
    assert len(errors(err)) == 1, err
    assert all(text in errors(err)[0] for text in expected), errors(err)[0]
    assert "Traceback" not in err


@pytest.mark.parametrize("command", ["train", "compare", "score", "transfer"])
def test_help_lists_the_config_groups_and_the_commands_own_keys(command, capsys, monkeypatch):
    code, out, _ = run_main([command, "--help"], capsys, monkeypatch)
    assert code == 0
    assert out.startswith(f"usage: rlprompt {command} ")
    for line in (
        "task       car_sales*, saas_renewal",
        "target     gemma3, openai, smollm2*",
        "policy     components, lora, tokens*",
        "reward     rubric, sales_default*, sales_full",
        "optimizer  bandit, components, manual, opro, ppo*, random, template",  # not `common`: a base file
    ):
        assert f"  {line}\n" in out, out
    assert "--config-dir DIR" in out and "task.path=" in out and "eval.*" in out
    if command == "score":
        assert "score's own keys (+KEY=VALUE): prompt_text, prompt_file, split, limit" in out


def test_overview_and_export_help(capsys, monkeypatch):
    code, out, _ = run_main(["--help"], capsys, monkeypatch)
    assert code == 0 and all(f"  {name}" in out for name in COMMANDS)
    assert "accelerate launch" in out and "-m rlprompt.train" in out
    code, out, _ = run_main(["export", "--help"], capsys, monkeypatch)
    assert code == 0 and out.startswith("usage: rlprompt export") and "--verify" in out


def test_a_users_config_dir_adds_group_options(tmp_path, capsys, monkeypatch):
    own = tmp_path / "my_configs"
    (own / "task").mkdir(parents=True)
    (own / "task" / "my_task.yaml").write_text(f"name: my_task\npath: {tmp_path / 'my_task'}\n")
    code, out, _ = run_main(["train", "--config-dir", str(own), "--help"], capsys, monkeypatch)
    assert code == 0 and "task       car_sales*, my_task, saas_renewal" in out
    code, _, err = run_main(["train", f"--config-dir={own}", "task=my_tsk"], capsys, monkeypatch)
    assert code == 2 and "Valid task names: car_sales, my_task, saas_renewal" in errors(err)[0]
    # composed by Hydra (a subprocess: Hydra's global state stays out of this test process)
    for extra in (["--config-dir", str(own)], [f"hydra.searchpath=[file://{own}]"]):
        done = subprocess.run(
            [sys.executable, "-m", "rlprompt", "score", *extra, "task=my_task", "--cfg", "job"],
            cwd=tmp_path,
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert done.returncode == 0, done.stderr[-2000:]
        assert f"name: my_task\n  path: {tmp_path / 'my_task'}" in done.stdout


def test_scripts_are_thin_entry_points_calling_the_command():
    """scripts/<name>.py holds no logic: it imports `cli` from rlprompt.commands.<name> and calls it."""
    for name in COMMANDS:
        tree = ast.parse((REPO / "scripts" / f"{name}.py").read_text())
        body = [n for n in tree.body if not (isinstance(n, ast.Expr) and isinstance(n.value, ast.Constant))]
        assert len(body) == 2, name
        assert isinstance(body[0], ast.ImportFrom) and body[0].module == f"rlprompt.commands.{name}"
        assert [a.name for a in body[0].names] == ["cli"]
        assert ast.unparse(body[1]) == "if __name__ == '__main__':\n    cli()", name


# ---------------------------------------------------------------------- the wheel


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    """The wheel, built offline from a copy of the sources (the checkout gets no build/ or egg-info)."""
    root = tmp_path_factory.mktemp("wheel")
    (root / "src").mkdir()
    for name in SOURCES:
        source = REPO / name
        if source.is_dir():
            shutil.copytree(
                source, root / "src" / name, ignore=shutil.ignore_patterns("__pycache__", "*.pyc")
            )
        else:
            shutil.copy2(source, root / "src" / name)
    done = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--no-index",
         "-q", "-w", str(root / "dist"), str(root / "src")],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    (found,) = (root / "dist").glob("rlprompt-*.whl")
    return found


def test_the_wheel_ships_configs_tasks_and_the_command(wheel):
    names = set(zipfile.ZipFile(wheel).namelist())
    configs = {p.relative_to(REPO / "configs").as_posix() for p in (REPO / "configs").rglob("*.yaml")}
    tasks = {
        p.relative_to(REPO / "tasks").as_posix()
        for p in (REPO / "tasks").rglob("*")
        if p.suffix in (".yaml", ".jsonl")
    }
    assert {
        "car_sales/preferences.jsonl",
        "car_sales/scenarios.jsonl",
        "saas_renewal/scenarios.jsonl",
    } <= tasks
    assert {f"rlprompt/configs/{c}" for c in configs} <= names
    assert {f"rlprompt/tasks/{t}" for t in tasks} <= names
    assert {f"rlprompt/commands/{c}.py" for c in COMMANDS} <= names
    assert {"rlprompt/train.py", "rlprompt/__main__.py", "rlprompt/rewards/base.py"} <= names
    assert not [n for n in names if n.split("/")[0] in ("configs", "tasks", "rewards", "scripts", "tests")]
    entry_points = zipfile.ZipFile(wheel).read("rlprompt-0.1.0.dist-info/entry_points.txt").decode()
    assert "rlprompt = rlprompt.cli:main" in entry_points


CHECK_INSTALL = """
import sys
from importlib.metadata import distribution, version
from pathlib import Path
from packaging.requirements import Requirement
import rlprompt, rlprompt.tasks, rlprompt.commands
from rlprompt.config import config_dir
from rlprompt.task import load_task
venv = Path(sys.argv[1]).resolve()
for path in (rlprompt.__file__, rlprompt.tasks.__file__, config_dir()):
    assert venv in Path(path).resolve().parents, f"{path} is not from the installed wheel in {venv}"
assert venv in Path(distribution("rlprompt").locate_file("rlprompt")).resolve().parents
for line in distribution("rlprompt").requires or []:
    req = Requirement(line)
    if req.marker is None or req.marker.evaluate({"extra": ""}):
        assert req.specifier.contains(version(req.name), prereleases=True), (line, version(req.name))
task = load_task("car_sales")
assert task.scenarios and (Path(rlprompt.tasks.__file__).parent / "car_sales" / "preferences.jsonl").is_file()
print("installed from", Path(rlprompt.__file__).parent)
"""

TINY_TRAIN = [
    "reward=rubric",
    "optimizer.steps=1",
    "optimizer.contexts_per_step=2",
    "optimizer.prompts_per_context=2",
    "optimizer.ppo_epochs=1",
    "policy.prompt_length=3",
    "target.max_new_tokens=12",
    "eval.max_scenarios=4",
    "eval.splits=[test]",
    "threads=1",
]


@pytest.mark.slow
def test_the_installed_wheel_works_outside_the_repository(wheel, tmp_path):
    venv, work = tmp_path / "venv", tmp_path / "elsewhere"
    work.mkdir()
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True, timeout=120)
    python = venv / "bin" / "python"
    done = subprocess.run(
        [sys.executable, "-m", "pip", "--python", str(python), "install", "--no-deps", "--no-index", "-q", str(wheel)],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    purelib = subprocess.run(
        [str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        capture_output=True, text=True, check=True,
    ).stdout.strip()  # fmt: skip
    # third-party packages: this interpreter's site-packages, searched after the venv's own
    (Path(purelib) / "_rlprompt_test_dependencies.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")

    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV")}
    env.update(OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false")
    env["PATH"] = f"{venv / 'bin'}{os.pathsep}{env.get('PATH', '')}"
    cache = f"cache.path={tmp_path / 'responses.sqlite'}"

    def run(*args: str, timeout: int = 600) -> subprocess.CompletedProcess:
        return subprocess.run(args, cwd=work, env=env, capture_output=True, text=True, timeout=timeout)

    checked = run(str(python), "-c", CHECK_INSTALL, str(venv))
    assert checked.returncode == 0, checked.stderr[-3000:]
    rlprompt = str(venv / "bin" / "rlprompt")

    helped = run(rlprompt, "train", "--help")
    assert helped.returncode == 0, helped.stderr[-2000:]
    assert "task       car_sales*, saas_renewal" in helped.stdout
    (configs,) = [
        line.split(":", 1)[1].strip() for line in helped.stdout.splitlines() if "packaged configs:" in line
    ]
    assert Path(configs).resolve().is_relative_to(venv.resolve()), configs
    for args, expected in (
        (["trian"], "Valid commands: train, compare, score, export, transfer"),
        (["train", "task=nope"], "Valid task names: car_sales, saas_renewal"),
        (["compare", "task=car_sales"], "compare needs +budget="),  # composed from the packaged configs
    ):
        failed = run(rlprompt, *args)
        assert failed.returncode == 2 and len(errors(failed.stderr)) == 1, failed.stderr[-2000:]
        assert expected in errors(failed.stderr)[0]

    scored = run(rlprompt, "score", "+split=test", "+limit=4", "target.max_new_tokens=12", "threads=1", cache)
    assert scored.returncode == 0, scored.stderr[-3000:]
    assert "task=car_sales" in scored.stdout and "reward=sales_default" in scored.stdout
    assert "preference" in scored.stdout  # the reward model fit on the packaged preferences.jsonl

    trained = run(rlprompt, "train", *TINY_TRAIN, cache)
    assert trained.returncode == 0, trained.stderr[-3000:]
    # the default hydra.run.dir, in the cwd (score's Hydra folder lies beside it)
    (run_dir,) = [p for p in (work / "runs" / "car_sales").glob("*-ppo") if (p / "summary.json").is_file()]
    assert "run folder:" in trained.stdout and run_dir.name in trained.stdout
    for name in (".hydra/config.yaml", "train.log", "summary.json", "prompts.json", "prompt.txt"):
        assert (run_dir / name).is_file(), name

    exported = run(rlprompt, "export", str(run_dir))
    assert exported.returncode == 0, exported.stderr[-3000:]
    assert (run_dir / "export").is_dir()
    transferred = run(
        rlprompt, "transfer", f"+prompts=[{run_dir / 'export'}]", "+targets=[smollm2]",
        "+target_overrides={max_new_tokens: 12}", "eval.max_scenarios=4", "threads=1", cache,
        f"+out={tmp_path / 'transfer'}",
    )  # fmt: skip
    assert transferred.returncode == 0, transferred.stderr[-3000:]
    assert (tmp_path / "transfer" / "transfer.json").is_file()

    # the module entry for launchers: accelerate starts `python -m rlprompt.train` from the wheel
    launched = run(
        str(python), "-m", "accelerate.commands.launch", "--cpu", "--num_processes", "1",
        "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
        "-m", "rlprompt.train", "task=nope",
    )  # fmt: skip
    assert launched.returncode != 0 and "error: unknown task 'nope'" in launched.stderr, launched.stderr[
        -2000:
    ]
