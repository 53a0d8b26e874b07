"""Every shell command that README.md shows runs, as written, in a copy of the repository's layout whose
../shared/fer2013 is a tiny synthetic data set; the docs pages' commands at least parse.

The one liberty taken: training commands get `--epochs 2` appended (flags override a recipe file), so
the suite stays fast; the demo gets a free `--port` and is stopped once it answers. `make` targets are
expanded with `make -n` only: `make reference` would retrain for hours and overwrite artifacts/.
"""

from __future__ import annotations

import importlib
import re
import shlex
import shutil
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from conftest import stop_process, write_folder_dataset
from test_demo_api import STARTUP_SECONDS, free_port

REPO = Path(__file__).resolve().parents[1]
SHARED_WITH_WORKSPACE = ("artifacts", "recipes", "demo")  # what the README's commands read from the repository


def shell_commands(markdown: Path) -> list[list[str]]:
    """The commands of every ```sh block, one per line, split as a shell would."""
    blocks = re.findall(r"```sh\n(.*?)```", markdown.read_text(), re.DOTALL)
    return [shlex.split(line) for block in blocks for line in block.splitlines() if line.strip()]


def python_command(words: list[str]) -> tuple[str, list[str]] | None:
    """('module.name', args) for `python -m MODULE ARGS`, `python demo/app.py ARGS` or a launcher's
    `torchrun … -m MODULE ARGS` / `accelerate launch … -m MODULE ARGS`; None for other commands (make, a
    benchmark script)."""
    if words[0] in ("torchrun", "accelerate") and "-m" in words:
        start = words.index("-m")
        return words[start + 1], words[start + 2:]
    if not words[0].endswith("python"):
        return None
    if words[1] == "-m":
        return words[2], words[3:]
    return ("demo.app", words[2:]) if words[1] == "demo/app.py" else None


def parse_cli(module: str, args: list[str]) -> dict:
    """What the module's `call_parse` main receives for `args`; an unknown flag or bad value fails the test."""
    from fastcore.script import anno_parser

    main = importlib.import_module(module).main
    return vars(anno_parser(main.__wrapped__).parse_args(args))


@pytest.fixture(scope="module")
def workspace(tmp_path_factory) -> Path:
    """A folder laid out like a checkout (artifacts/, recipes/, demo/) with ../shared/fer2013 beside it."""
    root = tmp_path_factory.mktemp("readme")
    write_folder_dataset(root / "shared" / "fer2013", {"train": 12, "test": 3})
    repo = root / "repo"
    repo.mkdir()
    for name in SHARED_WITH_WORKSPACE:
        (repo / name).symlink_to(REPO / name)
    return repo


def run(words: list[str], cwd: Path, timeout: int = 600) -> subprocess.CompletedProcess:
    result = subprocess.run(words, cwd=cwd, capture_output=True, text=True, timeout=timeout)
    assert result.returncode == 0, f"{' '.join(words)} failed:\n{result.stderr[-3000:]}"
    return result


def serve_until_it_answers(words: list[str], cwd: Path) -> None:
    """Start the demo, wait for its page to answer HTTP, stop it."""
    port = free_port()
    process = subprocess.Popen([*words, "--port", str(port)], cwd=cwd, stdout=subprocess.DEVNULL,
                               stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + STARTUP_SECONDS
    try:
        while True:
            assert process.poll() is None, f"{' '.join(words)} exited: {process.stderr.read()[-3000:]}"
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=2)
                return
            except OSError:
                assert time.monotonic() < deadline, f"{' '.join(words)} did not answer in {STARTUP_SECONDS} s"
                time.sleep(0.5)
    finally:
        stop_process(process)


def test_readme_shows_commands_for_every_job():
    commands = [" ".join(words) for words in shell_commands(REPO / "README.md")]
    for job in ("make demo", "make test", "-m fer_fastai.train", "-m fer_fastai.evaluate", "-m export.to_onnx",
                "demo/app.py"):
        assert any(job in command for command in commands), job


def test_every_readme_command_runs(workspace):
    ran = []
    for words in shell_commands(REPO / "README.md"):
        if words[0] == "make":
            if shutil.which("make") is None:
                continue
            run(["make", "-n", "-C", str(REPO), *words[1:]], workspace)
        else:
            parsed = python_command(words)
            assert parsed is not None, f"README shows a command no test runs: {' '.join(words)}"
            module, args = parsed
            command = [sys.executable, *(["-m", module] if module != "demo.app" else ["demo/app.py"]), *args]
            if module == "demo.app":
                serve_until_it_answers(command, workspace)
            else:
                run(command + (["--epochs", "2"] if module == "fer_fastai.train" else []), workspace)
        ran.append(" ".join(words))
    assert len(ran) >= 6, ran


@pytest.mark.parametrize("page", sorted((REPO / "docs").glob("*.md")), ids=lambda page: page.name)
def test_docs_commands_use_flags_that_exist(page):
    for words in shell_commands(page):
        parsed = python_command(words)
        if parsed is None:  # make targets and benchmark scripts
            assert words[0] == "make" or words[1].startswith(("bench/", "tools/")), words
            continue
        module, args = parsed
        if args != ["--help"]:
            parse_cli(module, args)
