"""Read and write circuits in the forms that circuit-discovery tools use.

Every reader takes the names a tool produces plus the model (a CompiledModel, a `ModelGraph`, or a
ground-truth `Circuit`, which carries its model graph) and returns a canonical `Circuit`: the edges
the tool named, walked back from the output over the model's parts, so that each edge carries the
labels it really carries (see `ModelGraph.circuit`). A name the model lacks raises `CircuitError`
naming it. Writers take a `Circuit`. A circuit converted to any form and read back is identical;
so is one converted between any two forms.

Forms
-----

JSON (this package's own; `to_json` / `from_json`, `save_json` / `load_json`), schema version 1::

    {
      "format": "verify.circuit",            # fixed tag
      "version": 1,                           # bumped on any incompatible change
      "output": "<RASP op label of the output>",
      "model": {"n_layers": int, "n_heads": int, "d_model": int | null},
      "method": "annotation" | "weights" | "",   # how it was derived (informational)
      "nodes": [                              # residual-stream order; "output" included
        {"name": "embed" | "pos_embed" | "L<l>.H<h>" | "L<l>.MLP" | "output",
         "ops": [{"op": "<label>", "neurons": [start, end] | null}, ...],
         "extra_ops": ["<selector or fused op label>", ...]}
      ],
      "edges": [                              # sorted by reader, input, writer
        {"writer": "<node>", "reader": "<node>", "input": "q" | "k" | "v" | "in",
         "labels": ["<residual label>", ...]}
      ]
    }

TransformerLens hook names (node level): `("hook_embed", None)`, `("hook_pos_embed", None)`,
`("blocks.{l}.attn.hook_result", h)`, `("blocks.{l}.hook_mlp_out", None)`; strings are accepted on
reading, with the head as `[:, :, h]` or `[h]` suffix. `blocks.{L-1}.hook_resid_post` (the output) is
accepted and ignored.

ACDC (`TLACDCCorrespondence.all_edges()` keys): `{(child_hook, child_index, parent_hook,
parent_index): present}` with indices as `TorchIndex.hashable_tuple` tuples: `(None,)` for whole
tensors, `(None, None, h)` for head h. Parents: `hook_embed`, `hook_pos_embed` (or the merged
`blocks.0.hook_resid_pre` when ACDC ran without `use_pos_embed`), `blocks.{l}.attn.hook_result`,
`blocks.{l}.hook_mlp_out`. Children: `blocks.{l}.hook_{q,k,v}_input`, `blocks.{l}.hook_mlp_in`
(older ACDC: `hook_resid_mid`), `blocks.{L-1}.hook_resid_post`. Also written are ACDC's internal
edges (`hook_q_input -> attn.hook_q -> attn.hook_result`, `hook_mlp_in -> hook_mlp_out`), present
where the component is in the circuit; reading checks their names and otherwise ignores them.
Values may be bools or objects with `.present`; indices may be TorchIndex objects.

auto-circuit: edge names `"{src}->{dest}"` with sources `Resid Start`, `A{l}.{h}`, `MLP {l}` and
destinations `A{l}.{h}.Q|K|V`, `MLP {l}`, `Resid End` (factorized graph, separate q/k/v). Prune
scores are keyed by destination module name (`blocks.{l}.hook_{q,k,v}_input`,
`blocks.{l}.hook_mlp_in`, `blocks.{L-1}.hook_resid_post`), each a tensor `[n_heads, n_src]` for head
inputs (`[n_src]` when n_heads is 1) or `[n_src]`, where n_src counts the sources before that
destination in auto-circuit's order (`Resid Start`, then per layer the heads then the MLP).

EAP-IG: nodes `input`, `a{l}.h{h}`, `m{l}`, `logits`; edges `parent->child` with `<q>`, `<k>`,
`<v>` appended for head children; its JSON export
`{"cfg": {...}, "nodes": {name: {"in_graph": bool}}, "edges": {name: {"score": float, "in_graph": bool}}}`.

auto-circuit's `Resid Start` and EAP-IG's `input` are the sum of both embeddings: reading such an
edge keeps whichever of `embed`/`pos_embed` the walk from the output uses (both if both); an edge
the walk does not reach maps to the embeddings that overlap the reader (or both).
"""

from verify.formats.acdc import from_acdc, to_acdc
from verify.formats.autocircuit import (
    from_autocircuit,
    from_autocircuit_scores,
    to_autocircuit,
    to_autocircuit_scores,
)
from verify.formats.circuit_json import JSON_VERSION, from_json, load_json, save_json, to_json
from verify.formats.eapig import eapig_json_scores, from_eapig, from_eapig_json, to_eapig, to_eapig_json
from verify.formats.files import read_circuit_file
from verify.formats.graphs import from_edges, from_nodes
from verify.formats.tl_hooks import from_tl_hooks, node_of_tl_hook, tl_hook, to_tl_hooks

__all__ = [
    "JSON_VERSION",
    "eapig_json_scores",
    "from_acdc",
    "from_autocircuit",
    "from_autocircuit_scores",
    "from_eapig",
    "from_eapig_json",
    "from_edges",
    "from_json",
    "from_nodes",
    "from_tl_hooks",
    "read_circuit_file",
    "load_json",
    "node_of_tl_hook",
    "save_json",
    "tl_hook",
    "to_acdc",
    "to_autocircuit",
    "to_autocircuit_scores",
    "to_eapig",
    "to_eapig_json",
    "to_json",
    "to_tl_hooks",
]
