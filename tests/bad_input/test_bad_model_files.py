"""Bad input, model files: no edit of model.json loads silently. Every field (config, codec, annotation,
program source, hashes, format fields) is changed in turn; each edit must be refused with a named reason."""

import json

import pytest
from support.library_models import compiled

from rasp_compiler.model import ModelFileError, load
from rasp_compiler.model.io import MANIFEST_FIELD


def _leaves(obj, path=()):
    if isinstance(obj, dict):
        for k, v in obj.items():
            yield from _leaves(v, (*path, k))
    elif isinstance(obj, list) and obj:
        for i, v in enumerate(obj):
            yield from _leaves(v, (*path, i))
    else:
        yield path, obj


def _changed(value):
    if isinstance(value, bool):
        return not value
    if isinstance(value, (int, float)):
        return value + 1
    if isinstance(value, str):
        return value + "x"
    if value is None:
        return 0
    return None  # an empty list or dict


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    d = tmp_path_factory.mktemp("tamper") / "sort"
    compiled("sort").save(d)
    return d


def test_every_field_edit_is_refused(saved, tmp_path) -> None:
    doc = json.loads((saved / "model.json").read_text())
    leaves = list(_leaves(doc))
    assert len(leaves) > 200  # the whole document, annotation included
    step = max(1, len(leaves) // 400)
    checked = 0
    for path, value in leaves[::step] + [p for p in leaves if p[0][0] == MANIFEST_FIELD]:
        edited = json.loads(json.dumps(doc))
        target = edited
        for key in path[:-1]:
            target = target[key]
        target[path[-1]] = _changed(value)
        d = tmp_path / f"m{checked}"
        d.mkdir()
        (d / "weights.safetensors").write_bytes((saved / "weights.safetensors").read_bytes())
        (d / "model.json").write_text(json.dumps(edited))
        with pytest.raises(ModelFileError, match="manifest|format|version"):
            load(d)
        checked += 1
    assert checked > 100


def test_swapped_input_tokens_are_refused(saved, tmp_path) -> None:
    """The probe that once answered wrong on 358 of 363 inputs: two tokens of the codec swapped."""
    doc = json.loads((saved / "model.json").read_text())
    toks = doc["codec"]["input_tokens"]
    toks[1], toks[2] = toks[2], toks[1]
    (tmp_path / "weights.safetensors").write_bytes((saved / "weights.safetensors").read_bytes())
    (tmp_path / "model.json").write_text(json.dumps(doc))
    with pytest.raises(ModelFileError, match="does not match its manifest_sha256"):
        load(tmp_path)


def test_format_version_1_files_are_refused_with_what_to_do(saved, tmp_path) -> None:
    doc = json.loads((saved / "model.json").read_text())
    doc["version"] = 1
    del doc[MANIFEST_FIELD]
    (tmp_path / "weights.safetensors").write_bytes((saved / "weights.safetensors").read_bytes())
    (tmp_path / "model.json").write_text(json.dumps(doc))
    with pytest.raises(ModelFileError, match="format version 1.*Rebuild the model"):
        load(tmp_path)


def _resigned(saved, tmp_path, change):
    """model.json edited by `change` and re-hashed, as a deliberate forger would: the manifest passes,
    so only the annotation-against-weights check stands between the edit and a wrong ground truth."""
    from rasp_compiler.model.io import manifest_sha256

    doc = json.loads((saved / "model.json").read_text())
    change(doc["annotation"])
    doc[MANIFEST_FIELD] = manifest_sha256(doc)
    (tmp_path / "weights.safetensors").write_bytes((saved / "weights.safetensors").read_bytes())
    (tmp_path / "model.json").write_text(json.dumps(doc))
    return tmp_path


def _first_head(ann):
    return next(b for b in ann["blocks"] if b["component"] == "attn")


@pytest.mark.parametrize(
    "change, message",
    [
        (lambda a: a.__setitem__("blocks", []), "no annotation block is it|blocks' writes"),
        (lambda a: _first_head(a).__setitem__("layer", 1), "L1.H0"),
        (lambda a: _first_head(a)["reads"].__setitem__("q", []), "reads on q"),
        (lambda a: _first_head(a).__setitem__("writes", _first_head(a)["writes"][:-1]), "writes"),
    ],
)
def test_resigned_annotation_edits_are_refused(tmp_path, change, message) -> None:
    d = tmp_path / "reverse"
    compiled("reverse").save(d)
    with pytest.raises(ModelFileError, match=f"annotation does not match the weights: .*({message})"):
        load(_resigned(d, tmp_path, change))


@pytest.mark.parametrize(
    "change, message",
    [
        (lambda a: _first_head(a)["reads"].__setitem__("q", []), "reads on q"),
        (lambda a: _first_head(a).__setitem__("writes", _first_head(a)["writes"][:-1]), "writes"),
    ],
)
def test_resigned_edits_of_a_rotated_variant_are_refused_in_its_frame(tmp_path, change, message) -> None:
    from rasp_compiler.transforms import variants

    variant = variants.add_noise(variants.rotate(compiled("reverse"), seed=3), heads=1, neurons=2, seed=0,
                                 cancel_heads=1)
    d = tmp_path / "variant"
    variant.save(d)
    assert load(d).annotation == variant.annotation  # untouched: loads, checked in the card's frame
    with pytest.raises(ModelFileError, match=f"annotation does not match the weights: .*({message})"):
        load(_resigned(d, tmp_path, change))
