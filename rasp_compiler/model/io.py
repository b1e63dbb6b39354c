"""Model files: `weights.safetensors` + `model.json` in one directory; never pickle.

`model.json` holds the format name and version, the config, the codec (token values with their
exact Python types), the ground-truth annotation, the program source and the sha256 of the weights
file. `load` checks every piece and reports damage as `ModelFileError` naming the file and problem.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import struct
from pathlib import Path
from typing import Any

import numpy as np

from rasp_compiler.model.annotation import Annotation
from rasp_compiler.model.codec import Codec
from rasp_compiler.model.config import ModelConfig, compare_weight_names
from rasp_compiler.model.errors import ModelError

__all__ = [
    "FORMAT_NAME",
    "FORMAT_VERSION",
    "ModelFileError",
    "ModelParts",
    "read_model_files",
    "write_model_files",
]

FORMAT_NAME = "rasp_compiler.model"
FORMAT_VERSION = 2  # 2: model.json carries manifest_sha256 over every other field
MANIFEST_FIELD = "manifest_sha256"
WEIGHTS_FILE = "weights.safetensors"
JSON_FILE = "model.json"


class ModelFileError(ValueError):
    """A model directory is missing, damaged, or does not match itself."""


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _weights_bytes(weights: dict[str, np.ndarray]) -> bytes:
    """The safetensors file for `weights`, byte-identical for the same weights in every process.

    safetensors writes its `__metadata__` map in per-process hash order; the header is rewritten here
    with sorted keys (same length, padded with spaces as the format allows), so the file and its sha256
    depend on the weights alone.
    """
    from safetensors.numpy import save as to_bytes

    raw = to_bytes(
        {n: np.ascontiguousarray(w, dtype=np.float32) for n, w in weights.items()},
        metadata={"format": FORMAT_NAME, "version": str(FORMAT_VERSION)},
    )
    (hlen,) = struct.unpack("<Q", raw[:8])
    header = json.loads(raw[8 : 8 + hlen])
    meta = header.pop("__metadata__", None)
    canon: dict[str, Any] = {} if meta is None else {"__metadata__": dict(sorted(meta.items()))}
    canon.update(sorted(header.items()))
    text = json.dumps(canon, separators=(",", ":")).encode()
    if len(text) > hlen:  # a reordering keeps the length; anything else is a safetensors change
        raise ModelFileError("safetensors wrote a header this library cannot canonicalise")
    return raw[:8] + text + b" " * (hlen - len(text)) + raw[8 + hlen :]


@dataclasses.dataclass(frozen=True)
class ModelParts:
    """What a model directory holds, checked against itself (`CompiledModel` is built from it)."""

    config: ModelConfig
    weights: dict[str, np.ndarray]
    codec: Codec
    annotation: Any
    program_source: str


def manifest_sha256(doc: dict[str, Any]) -> str:
    """sha256 of every field of a model.json document but the manifest itself, in canonical JSON: with
    `weights_sha256` among those fields, one hash covers everything that defines the model."""
    body = {k: v for k, v in doc.items() if k != MANIFEST_FIELD}
    text = json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def write_model_files(parts: ModelParts, directory: str | os.PathLike) -> Path:
    """Write a model's parts into `directory` (created if needed); returns the directory path."""
    model = parts
    d = Path(directory)
    d.mkdir(parents=True, exist_ok=True)
    wpath = d / WEIGHTS_FILE
    tmp = d / (WEIGHTS_FILE + ".tmp")
    tmp.write_bytes(_weights_bytes(model.weights))
    os.replace(tmp, wpath)
    try:
        ann = model.annotation
        annotation = ann.to_json() if isinstance(ann, Annotation) else ann
        doc = {
            "format": FORMAT_NAME,
            "version": FORMAT_VERSION,
            "config": model.config.to_json(),
            "codec": model.codec.to_json(),
            "annotation": annotation,
            # "Annotation": rebuilt with model.annotation.Annotation.from_json; "json": kept as data
            "annotation_type": "Annotation" if isinstance(model.annotation, Annotation) else "json",
            "program_source": model.program_source,
            "weights_file": WEIGHTS_FILE,
            "weights_sha256": _sha256(wpath),
        }
        doc[MANIFEST_FIELD] = manifest_sha256(doc)
        text = json.dumps(doc, indent=1, allow_nan=False)
    except (TypeError, ValueError) as e:
        raise ModelFileError(f"model cannot be written as JSON: {e}") from e
    jtmp = d / (JSON_FILE + ".tmp")
    jtmp.write_text(text, encoding="utf-8")
    os.replace(jtmp, d / JSON_FILE)
    return d


def _load_annotation(data: Any, kind: Any) -> Any:
    """Rebuild the Annotation object if one was saved; plain JSON annotations come back as data."""
    if data is None or kind != "Annotation":
        return data
    try:
        return Annotation.from_json(data)
    except Exception as e:  # noqa: BLE001 - any failure here means a damaged annotation
        raise ModelFileError(f"{JSON_FILE}: annotation is malformed ({type(e).__name__}: {e})") from e


def read_model_files(directory: str | os.PathLike) -> ModelParts:
    """Read a model directory written by `write_model_files`, checking format, version, hash, tensor
    names and shapes."""
    from safetensors import SafetensorError
    from safetensors.numpy import load_file

    d = Path(directory)
    if not d.is_dir():
        raise ModelFileError(f"model directory {str(d)!r} does not exist")
    jpath, wpath = d / JSON_FILE, d / WEIGHTS_FILE
    if not jpath.is_file():
        raise ModelFileError(f"{JSON_FILE} is missing in {str(d)!r}")
    if not wpath.is_file():
        raise ModelFileError(f"{WEIGHTS_FILE} is missing in {str(d)!r}")
    try:
        doc = json.loads(jpath.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ModelFileError(f"{JSON_FILE} is not valid JSON ({e})") from e
    if not isinstance(doc, dict):
        raise ModelFileError(f"{JSON_FILE} must hold a JSON object")
    if doc.get("format") != FORMAT_NAME:
        raise ModelFileError(f"{JSON_FILE}: format is {doc.get('format')!r}, expected {FORMAT_NAME!r}")
    version = doc.get("version")
    if version == 1:
        raise ModelFileError(
            f"{JSON_FILE} is format version 1, written before model files carried a manifest hash: its "
            "config, codec and annotation cannot be checked. Rebuild the model with this version "
            "(compiling the same program, or a suite with the same seed, gives the same model)"
        )
    if version != FORMAT_VERSION:
        raise ModelFileError(
            f"{JSON_FILE}: unknown format version {version!r} (this library reads version {FORMAT_VERSION})"
        )
    if not isinstance(doc.get(MANIFEST_FIELD), str):
        raise ModelFileError(f"{JSON_FILE} lacks the field {MANIFEST_FIELD!r}")
    if doc[MANIFEST_FIELD] != manifest_sha256(doc):
        raise ModelFileError(
            f"{JSON_FILE} does not match its {MANIFEST_FIELD}: a field (config, codec, annotation, program "
            "source or weights hash) changed after the model was written; edited models are refused"
        )
    for key in ("config", "codec", "weights_sha256"):
        if key not in doc:
            raise ModelFileError(f"{JSON_FILE} lacks the field {key!r}")
    try:
        config = ModelConfig.from_json(doc["config"])
        codec = Codec.from_json(doc["codec"])
    except (ModelError, TypeError) as e:
        raise ModelFileError(f"{JSON_FILE}: {e}") from e

    try:
        weights = load_file(str(wpath))
    except (SafetensorError, OSError, ValueError) as e:
        raise ModelFileError(f"{WEIGHTS_FILE} is truncated or corrupt ({e})") from e
    digest = _sha256(wpath)
    if digest != doc["weights_sha256"]:
        raise ModelFileError(
            f"{WEIGHTS_FILE} does not match {JSON_FILE}: sha256 {digest[:16]}... differs "
            f"from the recorded {str(doc['weights_sha256'])[:16]}... "
            "(file changed or damaged)"
        )
    expected, missing, extra = compare_weight_names(config, weights)
    if missing:
        raise ModelFileError(f"{WEIGHTS_FILE} lacks tensor(s) {missing[:6]} that the config requires")
    if extra:
        raise ModelFileError(f"{WEIGHTS_FILE} has tensor(s) {extra[:6]} that the config does not know")
    for name, shape in expected.items():
        if weights[name].shape != shape:
            raise ModelFileError(
                f"{WEIGHTS_FILE}: tensor {name} has shape {list(weights[name].shape)}, "
                f"the config says {list(shape)}"
            )
        if weights[name].dtype != np.float32:
            raise ModelFileError(
                f"{WEIGHTS_FILE}: tensor {name} has dtype {weights[name].dtype}, expected float32"
            )
    annotation = _load_annotation(doc.get("annotation"), doc.get("annotation_type"))
    source = doc.get("program_source", "")
    if not isinstance(source, str):
        raise ModelFileError(f"{JSON_FILE}: program_source must be a string")
    return ModelParts(config, weights, codec, annotation, source)
