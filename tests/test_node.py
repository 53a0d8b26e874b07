"""onnxruntime-node reproduces the conformance vectors (docs/onnx.md#node): `make node-check`'s install, then
its script on every vectors folder, and the script's failure when a probability is off."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from fer_fastai.conformance import VECTORS_FILE, compact_json, read_vectors

REPO = Path(__file__).resolve().parents[1]
FOLDERS = sorted(path.parent for path in (REPO / "artifacts" / "conformance").glob(f"*/{VECTORS_FILE}"))


@pytest.fixture(scope="module")
def node_check() -> list[str]:
    """The command that runs node/check.mjs, once onnxruntime-node is installed (skips where it cannot be)."""
    if not (shutil.which("node") and shutil.which("npm") and shutil.which("make")):
        pytest.skip("needs node, npm and make")
    install = subprocess.run(["make", "-s", "node/node_modules/.installed"], cwd=REPO, capture_output=True, text=True,
                             timeout=600)
    if install.returncode != 0:
        pytest.skip(f"onnxruntime-node did not install (offline?): {(install.stderr.strip().splitlines() or ['?'])[-1]}")
    return ["node", str(REPO / "node" / "check.mjs")]


@pytest.mark.parametrize("folder", FOLDERS, ids=lambda folder: folder.name)
def test_node_reproduces_the_vectors(node_check, folder: Path):
    result = subprocess.run([*node_check, str(folder)], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    assert result.stdout.count("\n") == 1 and "max |Δprob| 0.0e+0 (tolerance 1e-5): PASSED" in result.stdout


def test_node_check_fails_on_a_probability_that_is_off(node_check, tmp_path: Path):
    folder = tmp_path / "off"
    shutil.copytree(FOLDERS[0], folder)
    vectors = read_vectors(folder)
    vectors["model"]["path"] = str((FOLDERS[0] / vectors["model"]["path"]).resolve())
    face = next(case for case in vectors["cases"] if case["faces"])["faces"][0]
    face["probs"][0] += 2e-5
    (folder / VECTORS_FILE).write_text(compact_json(vectors))
    result = subprocess.run([*node_check, str(folder)], capture_output=True, text=True, timeout=300)
    assert result.returncode == 1
    assert result.stderr.startswith("node check: FAILED: ") and "probabilities differ by 2.00e-5 > 1e-5" in result.stderr
