"""Fail loudly, lose nothing (#30): a full disk, Ctrl-C, kill or an unwritable --out is one line naming the path,
is found before the work where it can be, and leaves no new file and no temporary file behind."""

from __future__ import annotations

import errno
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from export import to_onnx
from export.to_onnx import export_onnx
from fer_fastai import atomic, calibrate, evaluate, interpret
from fer_fastai.atomic import WriteError, atomic_path, write_json

REPO = Path(__file__).resolve().parents[1]
FULL = "No space left on device; free some space or choose another path"


def fill_disk_on(monkeypatch, name: str) -> None:
    """Path.write_text of a temporary file for `name` writes a little, then fails as a full disk does."""
    write_text = Path.write_text

    def full_disk(path: Path, text: str, *args, **kwargs):
        if not (path.name.startswith(f".{name}.") and path.name.endswith(".tmp")):
            return write_text(path, text, *args, **kwargs)
        write_text(path, text[:10])
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(Path, "write_text", full_disk)


def one_line_error(capsys, command, *args, **kwargs) -> str:
    """Run a CLI main; expect exit code 2 and one line on stderr, and return it without 'error: '."""
    with pytest.raises(SystemExit) as exit_info:
        command(*args, **kwargs)
    err = capsys.readouterr().err
    assert exit_info.value.code == 2 and err.startswith("error: ") and err.count("\n") == 1, err
    return err.strip().removeprefix("error: ")


def files_in(folder: Path) -> dict[str, bytes]:
    return {path.name: path.read_bytes() for path in folder.iterdir()}


def test_export_on_a_full_disk_writing_the_report_leaves_nothing(seed_model_file, face_folder, tmp_path, monkeypatch,
                                                                 capsys):
    fill_disk_on(monkeypatch, "seed.parity.json")
    err = one_line_error(capsys, to_onnx.main, weights=seed_model_file, out=tmp_path / "seed.onnx", data=face_folder)
    assert err == f"cannot write {tmp_path / 'seed.parity.json'}: {FULL}"
    assert list(tmp_path.iterdir()) == []  # the .onnx was complete, but lands only with its report


def test_export_on_a_full_disk_writing_int8_keeps_the_earlier_export(seed_model_file, face_folder, tmp_path,
                                                                     monkeypatch, capsys):
    for name in ("seed.onnx", "seed.int8.onnx", "seed.parity.json"):
        (tmp_path / name).write_text(f"{name} of an earlier export")
    earlier = files_in(tmp_path)

    def quantize_on_a_full_disk(fp32_path, int8_path, calibration):
        int8_path.write_bytes(b"half a model")
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(to_onnx, "quantize_int8", quantize_on_a_full_disk)
    err = one_line_error(capsys, to_onnx.main, weights=seed_model_file, out=tmp_path / "seed.onnx", data=face_folder,
                         int8=True)
    assert err == f"cannot write {tmp_path / 'seed.int8.onnx'}: {FULL}"
    assert files_in(tmp_path) == earlier


def test_export_interrupted_in_the_parity_check_leaves_nothing(seed_model_file, face_folder, tmp_path, monkeypatch):
    def interrupted(*args, **kwargs):
        assert len(list(tmp_path.glob(".seed.onnx.*.tmp"))) == 1  # the model is on disk, under its temporary name
        raise KeyboardInterrupt

    monkeypatch.setattr(to_onnx, "parity_report", interrupted)
    with pytest.raises(KeyboardInterrupt):
        export_onnx(seed_model_file, tmp_path / "seed.onnx", data=face_folder)
    assert list(tmp_path.iterdir()) == []


def test_temporary_files_of_dead_writers_are_removed_by_the_next_write(tmp_path, caplog):
    writer = subprocess.Popen([sys.executable, "-c", "pass"])
    writer.wait()  # its PID is now free: the process that wrote the file below was killed
    stale = tmp_path / f".seed.onnx.{writer.pid}.tmp"
    live = tmp_path / f".seed.parity.json.{os.getpid()}.tmp"  # being written right now, by this process
    unrelated = tmp_path / ".notes.tmp"
    for path in (stale, live, unrelated):
        path.write_text("partial")
    write_json(tmp_path / "other.json", {"written": True})
    assert not stale.exists() and live.exists() and unrelated.exists()
    assert f"removed {stale}, left by a run that was killed while writing" in caplog.text


def test_sigterm_while_writing_removes_the_temporary_file(tmp_path):
    script = ("import os, signal, sys, time\n"
              "from fer_fastai.atomic import atomic_path\n"
              "with atomic_path(sys.argv[1]) as temp:\n"
              "    temp.write_text('half')\n"
              "    os.kill(os.getpid(), signal.SIGTERM)\n"
              "    time.sleep(30)\n")
    done = subprocess.run([sys.executable, "-c", script, str(tmp_path / "out.json")], cwd=REPO, timeout=60)
    assert done.returncode == 128 + 15 and list(tmp_path.iterdir()) == []


def test_only_failures_of_the_file_being_written_become_one_line(tmp_path):
    with pytest.raises(FileNotFoundError):  # reading another file: its own error, untouched
        with atomic_path(tmp_path / "out.json") as temp:
            temp.write_text("{}")
            (tmp_path / "missing.csv").read_text()
    with pytest.raises(WriteError, match=f"cannot write {tmp_path / 'out.json'}: {FULL}") as error:
        with atomic_path(tmp_path / "out.json") as temp:
            raise OSError(errno.ENOSPC, "write() failed")
    assert isinstance(error.value, OSError)  # callers that can do without the file (the image cache) go on
    assert list(tmp_path.iterdir()) == []


@pytest.fixture
def never_load(monkeypatch):
    """Loading a model fails the test: an output problem must be found before the work starts."""
    def load(*args, **kwargs):
        raise AssertionError("the model was loaded before the output path was checked")

    for module in (evaluate, interpret):
        monkeypatch.setattr(module, "load_predictor", load)
    monkeypatch.setattr("fer_fastai.predict.TorchPredictor.from_file", load)


COMMANDS = {  # command → place → (its main, the options that make it write into place)
    "evaluate --json": lambda place: (evaluate.main, {"json": str(place / "r.json")}),
    "evaluate --csv": lambda place: (evaluate.main, {"csv": str(place / "p.csv")}),
    "evaluate --plots": lambda place: (evaluate.main, {"plots": str(place)}),
    "interpret --out": lambda place: (interpret.main, {"out": str(place)}),
    "calibrate (the card)": lambda place: (calibrate.main, {}),  # the card beside a model in place
}


def impossible_place(kind: str, tmp_path: Path, monkeypatch) -> tuple[Path, str]:
    """A folder that cannot be written, and why (as the error says it)."""
    if kind == "under a file":
        (tmp_path / "blocker").write_text("a file")
        return tmp_path / "blocker" / "out", f"{tmp_path / 'blocker'} is a file"
    if kind == "under /proc":
        if not Path("/proc/self").is_dir():
            pytest.skip("no /proc here")
        return Path("/proc/fer-fastai-test/out"), "No such file or directory"
    read_only = tmp_path / "read-only"  # root writes through chmod, so os.access says what a read-only mount would
    read_only.mkdir()
    access = os.access
    monkeypatch.setattr(atomic.os, "access",
                        lambda path, mode, **kwargs: Path(path) != read_only and access(path, mode, **kwargs))
    return read_only / "out", f"{read_only} is not writable"


@pytest.mark.parametrize("kind", ["under a file", "under /proc", "read-only"])
@pytest.mark.parametrize("command", COMMANDS)
def test_an_impossible_output_fails_before_the_model_is_loaded(command, kind, seed_model_file, face_folder, tmp_path,
                                                              monkeypatch, capsys, never_load):
    place, reason = impossible_place(kind, tmp_path, monkeypatch)
    main, options = COMMANDS[command](place)
    model = place / "model.safetensors" if main is calibrate.main else seed_model_file
    err = one_line_error(capsys, main, str(model), data=str(face_folder), **options)
    assert err == f"cannot write into {place}: {reason}; choose another path"
    assert not place.exists()


def test_calibrate_on_a_full_disk_leaves_the_card_as_it_was(seed_model_file, make_folder_dataset, tmp_path, monkeypatch,
                                                            capsys):
    data = make_folder_dataset({"train": 2, "valid": 2, "test": 1})
    model = tmp_path / "m" / "model.safetensors"
    model.parent.mkdir()
    shutil.copy(seed_model_file, model)
    shutil.copy(seed_model_file.with_suffix(".json"), model.with_suffix(".json"))
    before = files_in(model.parent)
    fill_disk_on(monkeypatch, "model.json")
    err = one_line_error(capsys, calibrate.main, str(model), data=str(data))
    assert err == f"cannot write {model.with_suffix('.json')}: {FULL}"
    assert files_in(model.parent) == before


@pytest.fixture
def tmpfs(tmp_path):
    """mount(options) → a folder with a fresh tmpfs on it; skips where mounting is not allowed (not root)."""
    mounted = []

    def mount(options: str) -> Path:
        folder = tmp_path / f"tmpfs{len(mounted)}"
        folder.mkdir()
        command = ["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(folder)]
        if shutil.which("mount") is None or subprocess.run(command, capture_output=True).returncode:
            pytest.skip("cannot mount a tmpfs here")
        mounted.append(folder)
        return folder

    yield mount
    for folder in mounted:
        subprocess.run(["umount", str(folder)], check=False)


def test_export_onto_a_real_full_disk(seed_model_file, face_folder, tmpfs, capsys):
    disk = tmpfs("size=1m")  # the seed net's .onnx is ~6 MB
    err = one_line_error(capsys, to_onnx.main, weights=seed_model_file, out=disk / "seed.onnx", data=face_folder)
    assert err == f"cannot write {disk / 'seed.onnx'}: {FULL}"
    assert list(disk.iterdir()) == []


def test_evaluate_into_a_real_read_only_mount_fails_first(seed_model_file, face_folder, tmpfs, capsys, never_load):
    disk = tmpfs("ro,size=1m")
    err = one_line_error(capsys, evaluate.main, str(seed_model_file), data=str(face_folder), json=str(disk / "r.json"))
    assert err.startswith(f"cannot write into {disk}: ") and err.endswith("; choose another path")
