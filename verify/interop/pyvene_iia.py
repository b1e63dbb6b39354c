"""A compiled model as pyvene wants it, and interchange interventions on the ground-truth alignment run
through pyvene itself.

pyvene finds a model's components through its registries (`type_to_module_mapping`,
`type_to_dimension_mapping`) keyed by the model's class, and reads `model.config` and `model.device`;
`pyvene_model` registers the compiled module's writer outputs under pyvene's component names
(`embed_output`, `pos_embed_output`, `attention_output`, `mlp_output`, `block_output`, each `d_model`
wide) and sets those two attributes. A variable's subspace is a set of residual coordinates, so the
intervention is pyvene's `VanillaIntervention` restricted to those coordinates (`subspaces`), at every
position. A head of a layer with several heads has no pyvene component of its own (`attention_output`
sums the heads) and is refused.
"""

from __future__ import annotations

import types
import warnings
from typing import Any

import numpy as np

from verify.causal.interchange import Alignment, IIAResult, iia_of_outputs
from verify.circuit import node_kind
from verify.dataset import CausalError, Dataset

__all__ = ["pyvene_component", "pyvene_interchange_accuracy", "pyvene_model"]


def pyvene_model(model: Any) -> Any:
    """The model's PyTorch module, registered with pyvene (see the module docstring)."""
    import pyvene as pv
    import torch
    from pyvene.models.constants import CONST_OUTPUT_HOOK

    from rasp_compiler.model.torch_model import HookedCompiledTransformer

    pv.type_to_module_mapping[HookedCompiledTransformer] = {
        "embed_output": ("hook_embed", CONST_OUTPUT_HOOK),
        "pos_embed_output": ("hook_pos_embed", CONST_OUTPUT_HOOK),
        "attention_output": ("blocks[%s].hook_attn_out", CONST_OUTPUT_HOOK),
        "mlp_output": ("blocks[%s].hook_mlp_out", CONST_OUTPUT_HOOK),
        "block_output": ("blocks[%s].hook_resid_post", CONST_OUTPUT_HOOK),
    }
    pv.type_to_dimension_mapping[HookedCompiledTransformer] = {
        name: ("hidden_size",) for name in pv.type_to_module_mapping[HookedCompiledTransformer]
    }
    module = model.to_torch().eval()
    module.config = types.SimpleNamespace(hidden_size=int(model.config.d_model))
    module.device = torch.device("cpu")
    return module


def pyvene_component(model: Any, component: str) -> tuple[int, str]:
    """(layer, pyvene component name) of one of our writers (`embed`, `L1.MLP`, `L2.H0`, ...)."""
    kind, layer, _ = node_kind(component)
    if kind in ("embed", "pos_embed"):
        return 0, f"{kind}_output"
    if kind == "mlp":
        return int(layer), "mlp_output"
    if kind == "attn" and model.config.n_heads == 1:
        return int(layer), "attention_output"
    raise CausalError(f"pyvene has no component for head {component} of a layer with "
                      f"{model.config.n_heads} heads (its attention_output sums them)")


def pyvene_interchange_accuracy(model: Any, alignment: Alignment, dataset: Dataset) -> IIAResult:
    """`verify.causal.interchange_accuracy` with the intervention run by pyvene: the alignment's writer
    output, inside its residual subspace, swapped from each corrupted input into its clean one."""
    import pyvene as pv
    import torch

    layer, component = pyvene_component(model, alignment.component)
    labels = list(model.config.residual_labels)
    dims = [labels.index(label) for label in alignment.subspace]
    base = torch.as_tensor(np.asarray(dataset.clean_ids))
    source = torch.as_tensor(np.asarray(dataset.corrupt_ids))
    batch, length = base.shape
    positions = list(range(length)) if alignment.positions is None else [p + 1 for p in alignment.positions]
    config = pv.IntervenableConfig(
        representations=[pv.RepresentationConfig(layer, component, "pos", len(positions))],
        intervention_types=pv.VanillaIntervention,
    )
    intervenable = pv.IntervenableModel(config, pyvene_model(model))
    where = [[positions] * batch]
    with torch.no_grad(), warnings.catch_warnings():
        # pyvene writes into an expanded tensor internally (a torch deprecation warning, not ours)
        warnings.filterwarnings("ignore", message="Use of index_put_ on expanded tensors")
        _, out = intervenable(
            {"tokens": base},
            [{"tokens": source}],
            unit_locations={"sources->base": (where, where)},
            subspaces=[[dims] * batch],
        )
    return iia_of_outputs(model, alignment, dataset.clean, dataset.corrupt, dataset.program,
                          out.detach().numpy(), backend="pyvene")
