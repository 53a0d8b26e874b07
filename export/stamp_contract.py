"""Add the photo contract to files exported before it existed, weights untouched.

    python -m export.stamp_contract artifacts/fer_ensemble.onnx [artifacts/fer_student.onnx ...]

For each `NAME.onnx`: the `preprocess` metadata entry (`fer_fastai.contract`) goes into it and into its int8
twin, and the card beside them (`NAME.json`) gains the same entry; nothing else in the files changes, so
their parity proof still holds (checked: the graph, weights included, is byte for byte the same), and
`NAME.parity.json` gets the new file's sha256. The card must be the one the file was exported from (same
weights, temperature and threshold), or the file is re-exported instead. All files of a model land
together or not at all.
"""

from __future__ import annotations

import json
from pathlib import Path

import onnx
from fastcore.script import call_parse

from export.to_onnx import card_beside_onnx, set_metadata
from fer_fastai import paths
from fer_fastai.atomic import atomic_files, json_text
from fer_fastai.card import ModelCard, card_from_onnx_metadata, read_card
from fer_fastai.contract import preprocess_contract
from fer_fastai.errors import FerError, cli_errors
from fer_fastai.model_io import file_sha256


def check_same_model(card: ModelCard, proto: onnx.ModelProto, path: Path) -> None:
    """The card beside `path` is the one it was exported from: a contract built from another card would
    state a temperature or threshold the graph does not use."""
    exported = card_from_onnx_metadata({p.key: p.value for p in proto.metadata_props}, str(path))
    differ = [name for name, mine, theirs in (("weights sha256", card.weights_sha256, exported.weights_sha256),
                                              ("temperature", card.temperature, exported.temperature),
                                              ("uncertainty threshold", card.threshold, exported.threshold),
                                              ("labels", card.labels, exported.labels)) if mine != theirs]
    if differ:
        raise FerError(f"{path}: its metadata and the card {paths.sibling(path, 'card').name} differ in "
                       f"{', '.join(differ)}; re-export it (python -m export.to_onnx) instead")


def stamp_contract(onnx_path: str | Path) -> list[Path]:
    """Write the contract into `onnx_path`, its int8 twin and its card; returns the files rewritten."""
    onnx_path = Path(onnx_path)
    if onnx_path.suffix.lower() != ".onnx" or paths.is_int8(onnx_path):
        raise FerError(f"{onnx_path}: give the fp32 NAME.onnx; its NAME.int8.onnx twin is stamped with it")
    if not onnx_path.is_file():
        raise FerError(f"{onnx_path}: no such ONNX file")
    card = read_card(onnx_path)
    contract = json.dumps(preprocess_contract(card))
    models = [path for path in (onnx_path, paths.sibling(onnx_path, "int8")) if path.is_file()]
    protos = {path: onnx.load(str(path)) for path in models}
    graphs = {path: proto.graph.SerializeToString() for path, proto in protos.items()}
    for path, proto in protos.items():
        check_same_model(card, proto, path)
        set_metadata(proto, {"preprocess": contract})
    written = [*models, paths.sibling(onnx_path, "card")]
    with atomic_files() as stage:
        temps = {}
        for path, proto in protos.items():
            with stage(path) as temp:
                onnx.save(proto, str(temp))
                if onnx.load(str(temp)).graph.SerializeToString() != graphs[path]:
                    raise FerError(f"{path}: the graph changed on saving; nothing was written")
            temps[path] = temp
        with stage(paths.sibling(onnx_path, "card")) as temp:
            temp.write_text(json_text(card_beside_onnx(card).to_dict()))
        parity = paths.sibling(onnx_path, "parity")
        if parity.is_file():
            report = json.loads(parity.read_text())
            report["onnx_sha256"] = file_sha256(temps[onnx_path])
            with stage(parity) as temp:
                temp.write_text(json_text(report))
            written.append(parity)
    return written


@call_parse
def main(*onnx_files: str,  # NAME.onnx files exported with fer_fastai (their int8 twins and cards are updated too)
         ):
    "Add the photo contract (metadata `preprocess`) to exported ONNX files and their cards, weights untouched."
    with cli_errors():
        if not onnx_files:
            raise FerError("name at least one NAME.onnx file, e.g. artifacts/fer_ensemble.onnx")
        for onnx_file in onnx_files:
            print("updated " + ", ".join(str(path) for path in stamp_contract(onnx_file)))
