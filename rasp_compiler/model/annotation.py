"""Ground-truth annotation: which block implements which RASP op, and what it reads and writes.

Recorded by the compiler while it builds the weights (docs/CONTRACTS.md section 3). `verify` turns
it into circuits; tests check it against the nonzero structure of the weights.
"""

from __future__ import annotations

import dataclasses
import json
from typing import Any

from rasp_compiler.model.errors import ModelError
from rasp_compiler.model.values import decode_value, encode_value, plain_json

__all__ = [
    "ANNOTATION_VERSION",
    "Annotation",
    "AnnotationError",
    "BlockAnnotation",
    "OpAnnotation",
    "OutputColumns",
    "VariantCard",
]

ANNOTATION_VERSION = 1
OP_KINDS = (
    "tokens",
    "indices",
    "map",
    "sequence_map",
    "linear_sequence_map",
    "full",
    "constant_sop",
    "aggregate",
    "selector_width",
    "select",
    "selector_and",
    "selector_or",
    "selector_not",
    "constant_selector",
    "one",
)
COMPONENTS = ("embed", "pos_embed", "attn", "mlp")


class AnnotationError(ValueError):
    """An annotation (or its JSON) is malformed."""


@dataclasses.dataclass(frozen=True)
class OpAnnotation:
    """One RASP op: its kind, encoding, children (labels), residual directions and value set, and the
    precondition its exactness rests on when the program declared one the compiler could not prove."""

    kind: str
    encoding: str | None
    children: tuple[str, ...]
    directions: tuple[str, ...]
    values: tuple[Any, ...] | None
    assumption: str | None = None

    def to_json(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "encoding": self.encoding,
            "children": list(self.children),
            "directions": list(self.directions),
            "values": None if self.values is None else [plain_json(v) for v in self.values],
        } | ({} if self.assumption is None else {"assumption": self.assumption})

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> OpAnnotation:
        try:
            vals = data["values"]
            return cls(
                kind=str(data["kind"]),
                encoding=data["encoding"],
                children=tuple(data["children"]),
                directions=tuple(data["directions"]),
                values=None if vals is None else tuple(_untuple(v) for v in vals),
                assumption=_optional_str(data, "assumption"),
            )
        except (KeyError, TypeError) as e:
            raise AnnotationError(f"malformed op annotation {data!r}: {e}") from None


@dataclasses.dataclass(frozen=True)
class BlockAnnotation:
    """One component's share of the model: an embedding, a head, or a neuron range of an MLP.

    `reads` maps an input name (`q`, `k`, `v` for heads, `in` for MLPs) to residual labels.
    `ops` lists every op the block implements (several when the compiler fused ops into one block);
    `op` is the first of them.
    """

    op: str
    component: str
    writes: tuple[str, ...]
    reads: dict[str, tuple[str, ...]] = dataclasses.field(default_factory=dict)
    layer: int | None = None
    head: int | None = None
    neurons: tuple[int, int] | None = None
    selectors: tuple[str, ...] = ()
    ops: tuple[str, ...] = ()
    cancelled_writes: tuple[str, ...] = ()  # a distractor whose write a partner cancels (variants)
    # heads: per selector group, how the predicate table is factored into W_Q and W_K (query_classes,
    # key_classes, key_rank_blocks, query_rank_blocks or tracr); the residual reads are the same for all
    qk_encoding: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if not self.ops:
            object.__setattr__(self, "ops", (self.op,))

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"op": self.op, "component": self.component}
        if self.layer is not None:
            out["layer"] = self.layer
        if self.head is not None:
            out["head"] = self.head
        if self.neurons is not None:
            out["neurons"] = list(self.neurons)
        if self.component == "attn":
            out["selectors"] = list(self.selectors)
        if self.reads:
            out["reads"] = {k: list(v) for k, v in self.reads.items()}
        out["writes"] = list(self.writes)
        if self.cancelled_writes:
            out["cancelled_writes"] = list(self.cancelled_writes)
        if self.qk_encoding:
            out["qk_encoding"] = list(self.qk_encoding)
        if self.ops and tuple(self.ops) != (self.op,):
            out["ops"] = list(self.ops)
        return out

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> BlockAnnotation:
        try:
            comp = data["component"]
            if comp not in COMPONENTS:
                raise AnnotationError(f"unknown block component {comp!r}")
            neurons = data.get("neurons")
            return cls(
                op=str(data["op"]),
                component=comp,
                writes=tuple(data["writes"]),
                reads={k: tuple(v) for k, v in data.get("reads", {}).items()},
                layer=data.get("layer"),
                head=data.get("head"),
                neurons=None if neurons is None else (int(neurons[0]), int(neurons[1])),
                selectors=tuple(data.get("selectors", ())),
                ops=tuple(data.get("ops", (data["op"],))),
                cancelled_writes=tuple(data.get("cancelled_writes", ())),
                qk_encoding=tuple(data.get("qk_encoding", ())),
            )
        except (KeyError, TypeError, IndexError) as e:
            raise AnnotationError(f"malformed block annotation {data!r}: {e}") from None

    @property
    def all_ops(self) -> tuple[str, ...]:
        return self.ops or (self.op,)


@dataclasses.dataclass(frozen=True)
class OutputColumns:
    """One output of a multi-output model: columns [start, end) of `W_U`, decoded as `encoding`."""

    start: int
    end: int
    encoding: str
    values: tuple[Any, ...] | None  # categorical: the value of each column

    def to_json(self) -> dict[str, Any]:
        vals = None if self.values is None else [encode_value(v) for v in self.values]
        return {"start": self.start, "end": self.end, "encoding": self.encoding, "values": vals}

    @classmethod
    def from_json(cls, data: Any) -> OutputColumns:
        try:
            vals = data["values"]
            return cls(int(data["start"]), int(data["end"]), str(data["encoding"]),
                       None if vals is None else tuple(decode_value(v) for v in vals))
        except (KeyError, TypeError, ValueError, ModelError) as e:
            raise AnnotationError(f"malformed output columns {data!r}: {e}") from None


@dataclasses.dataclass(frozen=True)
class VariantCard:
    """How a variant (`rasp_compiler.transforms`) changed the model: its steps, the labelled frame it
    keeps (`labels`, and each label's vector in residual coordinates, `basis`, None = identity), and
    whether the ground truth became approximate (with the measured accuracy)."""

    steps: tuple[dict[str, Any], ...]
    labels: tuple[str, ...]
    approximate: bool = False
    accuracy: float | None = None
    basis: tuple[tuple[float, ...], ...] | None = None

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"steps": [dict(s) for s in self.steps], "labels": list(self.labels),
                               "approximate": self.approximate, "accuracy": self.accuracy}
        if self.basis is not None:
            out["basis"] = [list(row) for row in self.basis]
        return out

    @classmethod
    def from_json(cls, data: Any) -> VariantCard:
        try:
            basis = data.get("basis")
            return cls(
                steps=tuple(dict(s) for s in data["steps"]),
                labels=tuple(str(x) for x in data.get("labels") or ()),
                approximate=bool(data.get("approximate", False)),
                accuracy=data.get("accuracy"),
                basis=None if basis is None else tuple(tuple(float(x) for x in row) for row in basis),
            )
        except (KeyError, TypeError, ValueError, AttributeError) as e:
            raise AnnotationError(f"malformed variant card: {e}") from None


@dataclasses.dataclass(frozen=True)
class Annotation:
    """The compiler's ground truth for one model.

    Single-output models fill `output`, `ops` and `blocks`. A multi-output model also lists its outputs
    (`outputs`: op labels; `output_names`: name -> op label; `output_columns`: name -> its `W_U`
    columns); a variant carries its `variant` card. Every model kind has this one typed record; its
    JSON form (docs/CONTRACTS.md section 3) is what files hold and what `verify` reads.
    """

    output: str
    ops: dict[str, OpAnnotation]
    blocks: tuple[BlockAnnotation, ...]
    version: int = ANNOTATION_VERSION
    outputs: tuple[str, ...] = ()
    output_names: dict[str, str] = dataclasses.field(default_factory=dict)
    output_columns: dict[str, OutputColumns] = dataclasses.field(default_factory=dict)
    variant: VariantCard | None = None

    def to_json(self) -> dict[str, Any]:
        """JSON-able dict in the layout of docs/CONTRACTS.md section 3."""
        out: dict[str, Any] = {
            "version": self.version,
            "output": self.output,
            "ops": {k: v.to_json() for k, v in self.ops.items()},
            "blocks": [b.to_json() for b in self.blocks],
        }
        if self.outputs:
            out["outputs"] = list(self.outputs)
            out["output_names"] = dict(self.output_names)
            out["output_columns"] = {k: v.to_json() for k, v in self.output_columns.items()}
        if self.variant is not None:
            out["variant"] = self.variant.to_json()
        return out

    def dumps(self) -> str:
        return json.dumps(self.to_json(), sort_keys=False)

    @classmethod
    def from_json(cls, data: dict[str, Any] | str) -> Annotation:
        """Inverse of `to_json` (also accepts the JSON text)."""
        if isinstance(data, str):
            try:
                data = json.loads(data)
            except json.JSONDecodeError as e:
                raise AnnotationError(f"annotation is not valid JSON: {e}") from None
        if not isinstance(data, dict):
            raise AnnotationError(f"annotation must be a JSON object, got {type(data).__name__}")
        version = data.get("version")
        if version != ANNOTATION_VERSION:
            raise AnnotationError(
                f"unsupported annotation version {version!r} (expected {ANNOTATION_VERSION})"
            )
        try:
            ops = {str(k): OpAnnotation.from_json(v) for k, v in data["ops"].items()}
            blocks = tuple(BlockAnnotation.from_json(b) for b in data["blocks"])
            variant = data.get("variant")
            return cls(
                output=str(data["output"]),
                ops=ops,
                blocks=blocks,
                version=version,
                outputs=tuple(str(o) for o in data.get("outputs", ())),
                output_names={str(k): str(v) for k, v in (data.get("output_names") or {}).items()},
                output_columns={str(k): OutputColumns.from_json(v)
                                for k, v in (data.get("output_columns") or {}).items()},
                variant=None if variant is None else VariantCard.from_json(variant),
            )
        except (KeyError, AttributeError, TypeError) as e:
            raise AnnotationError(f"malformed annotation: {e}") from None

    def blocks_for(self, op: str) -> list[BlockAnnotation]:
        """Every block implementing `op` (fused blocks included)."""
        return [b for b in self.blocks if op in b.all_ops]


def _optional_str(data: dict[str, Any], key: str) -> str | None:
    value = data.get(key)
    if value is not None and not isinstance(value, str):
        raise AnnotationError(f"field {key!r} must be a string, got {value!r}")
    return value


def _untuple(value: Any) -> Any:
    """JSON lists back to tuples (value sets hold tuples, never lists)."""
    return tuple(_untuple(v) for v in value) if isinstance(value, list) else value


