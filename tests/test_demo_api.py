"""The demo as its users call it: `python demo/app.py` in a subprocess on a free port, driven by gradio_client.

One server (module scope) serves a random-init seed model in both formats, so both backends answer
the same photo. The exporter is another module; until it exists only the torch backend is tested.
"""

from __future__ import annotations

import csv
import io
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import numpy as np
import pytest

from conftest import stop_process

ROOT = Path(__file__).resolve().parents[1]
APP = ROOT / "demo" / "app.py"
EXAMPLES = ROOT / "demo" / "examples"
TWO_FACES = EXAMPLES / "collins_and_hopper.jpg"
STARTUP_SECONDS = 120  # gradio + torch imports on a busy 2-core CI machine


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="module")
def model_pair(tmp_path_factory, seed_model_file, face_folder) -> Path:
    """model.safetensors + model.json, and model.onnx beside them when the exporter is available."""
    folder = tmp_path_factory.mktemp("demo-model")
    for suffix in (".safetensors", ".json"):
        shutil.copy(seed_model_file.with_suffix(suffix), folder / f"model{suffix}")
    try:
        from export.to_onnx import export_onnx
    except ImportError:
        return folder / "model.safetensors"
    export_onnx(folder / "model.safetensors", folder / "model.onnx", data=face_folder)  # parity on synthetic faces
    return folder / "model.onnx"


@pytest.fixture(scope="module")
def server(model_pair, tmp_path_factory):
    port = free_port()
    log_path = tmp_path_factory.mktemp("demo-log") / "server.log"
    with open(log_path, "w") as log:
        process = subprocess.Popen([sys.executable, str(APP), "--model", str(model_pair), "--port", str(port)],
                                   stdout=log, stderr=subprocess.STDOUT, cwd=ROOT)
    url = f"http://127.0.0.1:{port}/"
    deadline = time.monotonic() + STARTUP_SECONDS
    try:
        while True:
            if process.poll() is not None:
                pytest.fail(f"demo exited with {process.returncode}:\n{log_path.read_text()}")
            try:
                urllib.request.urlopen(url, timeout=2)
                break
            except OSError:
                if time.monotonic() > deadline:
                    pytest.fail(f"demo did not answer within {STARTUP_SECONDS} s:\n{log_path.read_text()}")
                time.sleep(0.5)
        yield {"url": url, "log": log_path, "port": port}
    finally:
        stop_process(process)


@pytest.fixture(scope="module")
def client(server):
    from gradio_client import Client

    return Client(server["url"], verbose=False)


def classify(client, path: Path, backend: str):
    from gradio_client import handle_file

    return client.predict(handle_file(str(path)), backend, api_name="/classify_photo")


def needs_onnx(model_pair: Path):
    if model_pair.suffix != ".onnx":
        pytest.skip("export/to_onnx.py is not in this checkout yet, so there is no .onnx to serve")


def test_binds_localhost_by_default(server):
    assert f"Running on local URL:  http://127.0.0.1:{server['port']}" in server["log"].read_text()


@pytest.mark.parametrize("backend", ["onnx", "torch"])
def test_photo_answer_names_the_backend_and_its_latency(client, model_pair, backend):
    if backend == "onnx":
        needs_onnx(model_pair)
    annotated, status, bars, faces = classify(client, TWO_FACES, backend)
    assert Path(annotated).is_file()
    assert f"**2 faces** · answered by **{backend}** in **" in status and " ms** (model)" in status
    assert "Face 1" in bars and "Face 2" in bars
    assert [sorted(face) for face in faces] == [["box", "emotions", "uncertain"]] * 2  # fer's shape, plus a field


def test_both_backends_agree_on_the_same_photo(client, model_pair):
    needs_onnx(model_pair)
    by_onnx, by_torch = classify(client, TWO_FACES, "onnx")[3], classify(client, TWO_FACES, "torch")[3]
    assert [face["box"] for face in by_onnx] == [face["box"] for face in by_torch]
    for onnx_face, torch_face in zip(by_onnx, by_torch):
        onnx_probs, torch_probs = (np.array(list(face["emotions"].values())) for face in (onnx_face, torch_face))
        np.testing.assert_allclose(onnx_probs, torch_probs, atol=2e-4)  # 4-decimal rounding + float noise
        assert onnx_probs.argmax() == torch_probs.argmax()


def test_the_heat_map_toggle_adds_a_map_per_face(client, model_pair):
    from gradio_client import handle_file

    plain = classify(client, TWO_FACES, "torch")
    annotated, status, _, faces = client.predict(handle_file(str(TWO_FACES)), "torch", True, api_name="/classify_photo")
    assert "heat map: the brighter (yellow) a spot" in status
    assert [np.asarray(face["heatmap"]).shape for face in faces] == [(48, 48)] * 2
    assert [face["emotions"] for face in faces] == [face["emotions"] for face in plain[3]]
    assert Path(annotated).read_bytes() != Path(plain[0]).read_bytes()  # the picture shows the maps


def test_a_48x48_crop_is_classified_without_detection(client, model_pair):
    backend = "onnx" if model_pair.suffix == ".onnx" else "torch"
    _, status, _, faces = classify(client, EXAMPLES / "collins_48.png", backend)
    assert "already-cropped face" in status and faces[0]["box"] == [0, 0, 48, 48]


def test_a_photo_without_a_face_gets_no_emotion_and_a_hint(client, model_pair, tmp_path):
    from PIL import Image

    blank = tmp_path / "wall.png"
    Image.new("RGB", (320, 240), "white").save(blank)
    annotated, status, bars, faces = classify(client, blank, "torch")
    assert faces == [] and status.startswith("**No face found**, nothing classified")
    assert "face the camera, add light, or crop closer" in bars and "%" not in bars  # a hint, no bars


@pytest.mark.parametrize("name, data, message", [
    ("notes.png", b"these are my notes, not an image\n" * 4, "notes.png: not a readable image"),
    ("empty.jpg", b"", "empty.jpg: the file is empty"),
    ("truncated.jpg", TWO_FACES.read_bytes()[:5000], "truncated.jpg: not a readable image"),
])
def test_bad_uploads_get_a_message_on_the_page(client, model_pair, tmp_path, name, data, message):
    path = tmp_path / name
    path.write_bytes(data)
    annotated, status, bars, faces = classify(client, path, "torch")
    assert status.startswith("**Could not use this image:**") and message in status
    assert annotated is None and faces is None
    assert "/tmp" not in status  # the user's file name, not the server's upload path


def test_batch_gives_a_table_and_the_same_csv(client, tmp_path):
    from gradio_client import handle_file

    bad = tmp_path / "=notes.png"  # a name a spreadsheet would run as a formula
    bad.write_bytes(b"not an image")
    pdf = tmp_path / "report.pdf"  # not an image type at all: a row, not a rejected batch
    pdf.write_bytes(b"%PDF-1.4\n1 0 obj << >> endobj\ntrailer << >>\n%%EOF\n")
    files = [TWO_FACES, EXAMPLES / "hopper_48.png", pdf, bad]
    table, csv_path, thumbnails, status = client.predict([handle_file(str(path)) for path in files], "torch",
                                                         api_name="/classify_batch")
    rows = table["data"]
    assert table["headers"] == ["file", "face", "x", "y", "w", "h", "label", "confidence", "note"]
    assert [row[0] for row in rows] == ["collins_and_hopper.jpg"] * 2 + ["hopper_48.png", "report.pdf", "=notes.png"]
    assert "not a readable image" in rows[-1][-1] and "not a picture format" in rows[-2][-1]
    assert "**4 files**" in status and "2 unreadable" in status
    assert [item["caption"].split(":")[0] for item in thumbnails] == [
        "collins_and_hopper.jpg · face 1", "collins_and_hopper.jpg · face 2", "hopper_48.png · face 1"]
    assert all(Path(item["image"]["path"] if isinstance(item["image"], dict) else item["image"]).is_file()
               for item in thumbnails)
    with open(csv_path, newline="") as handle:
        written = list(csv.reader(handle))
    assert written[0] == table["headers"] and len(written) == len(rows) + 1
    assert written[-1][0] == "'=notes.png" and written[1][0] == "collins_and_hopper.jpg"
    assert [row[6] for row in written[1:]] == [str(row[6]) for row in rows]


def test_cli_says_in_one_line_what_is_wrong(tmp_path):
    result = subprocess.run([sys.executable, str(APP), "--model", str(tmp_path / "missing.onnx"),
                             "--port", str(free_port())],
                            capture_output=True, text=True, timeout=STARTUP_SECONDS, cwd=ROOT)
    assert result.returncode == 2
    assert result.stderr.strip() == f"error: {tmp_path / 'missing.onnx'}: no such model file"


def test_a_busy_port_is_one_line_naming_the_port_flag():
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = subprocess.run([sys.executable, str(APP), "--port", str(port)],
                                capture_output=True, text=True, timeout=STARTUP_SECONDS, cwd=ROOT)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        f"error: port {port} on 127.0.0.1 is already in use (another demo still running?); "
        f"stop it, or pass --port with a free one, e.g. --port {port + 1}"]


def test_no_shipped_model_points_to_the_model_flag(tmp_path):
    from demo.app import resolve_model
    from fer_fastai.errors import FerError

    with pytest.raises(FerError, match=r"no model shipped yet in artifacts/ .*pass --model PATH"):
        resolve_model(None, default=tmp_path / "artifacts" / "fer_ensemble.onnx")


def test_app_builds_without_launching(model_pair):
    import gradio as gr

    from demo.app import build_app

    demo = build_app(model_pair)
    assert isinstance(demo, gr.Blocks) and not demo.is_running
    api_names = {fn.api_name for fn in demo.fns.values()}
    assert {"classify_photo", "classify_batch"} <= api_names


def test_the_api_lists_only_endpoints_a_client_can_call(client, tmp_path):
    """The webcam stream is the page's own; gradio_client cannot drive a stream, so it is not listed. Each
    listed endpoint answers a client (photo and batch in the tests above, the video here)."""
    from gradio_client import handle_file
    from PIL import Image
    import cv2

    assert set(client.view_api(print_info=False, return_format="dict")["named_endpoints"]) == {
        "/classify_photo", "/classify_batch", "/classify_video"}
    frame = cv2.cvtColor(np.asarray(Image.open(TWO_FACES).resize((320, 172))), cv2.COLOR_RGB2BGR)
    writer = cv2.VideoWriter(str(tmp_path / "clip.mp4"), cv2.VideoWriter_fourcc(*"mp4v"), 10, (320, 172))
    for _ in range(10):
        writer.write(frame)
    writer.release()
    video, timeline, table, status = client.predict(handle_file(str(tmp_path / "clip.mp4")), "torch", 1,
                                                    api_name="/classify_video")
    assert "10 frames" in status and Path(timeline).is_file() and Path(table).is_file()


def test_identical_requests_at_once_all_get_whole_answers(client, server):
    """8 clients send the same photo at once: every answer arrives whole (Gradio once wrote identical result
    images to one cache file in place, truncating the ones being sent)."""
    from concurrent.futures import ThreadPoolExecutor

    from gradio_client import Client
    from PIL import Image

    clients = [client] + [Client(server["url"], verbose=False) for _ in range(7)]
    with ThreadPoolExecutor(len(clients)) as pool:
        answers = list(pool.map(lambda c: classify(c, TWO_FACES, "torch"), clients))
    assert all("**2 faces**" in status for _, status, _, _ in answers)
    pictures = [Path(annotated).read_bytes() for annotated, _, _, _ in answers]
    assert len(set(pictures)) == 1
    Image.open(io.BytesIO(pictures[0])).load()  # complete, decodable
    assert "Content-Length" not in server["log"].read_text()


def test_webcam_frames_are_classified_in_process(model_pair):
    from PIL import Image

    from demo.app import Models, make_handlers

    frame = np.asarray(Image.open(TWO_FACES).resize((640, 345)))  # what a streaming gr.Image hands over
    annotated, status, bars = make_handlers(Models(model_pair.with_suffix(".safetensors")))["frame"](frame, "torch")
    assert annotated.size == (640, 345) and "**2 faces** · answered by **torch**" in status and "Face 2" in bars
