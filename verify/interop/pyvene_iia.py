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

import dataclasses
import types
import warnings
from typing import Any

import numpy as np

from verify.causal.interchange import Alignment, IIAResult, counterfactuals, iia_of_outputs
from verify.circuit import node_kind
from verify.dataset import CausalError, Dataset

__all__ = ["DASResult", "das_alignment", "pyvene_component", "pyvene_interchange_accuracy", "pyvene_model"]


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


@dataclasses.dataclass(frozen=True)
class DASResult:
    """A subspace learned by distributed alignment search (pyvene's LowRankRotatedSpaceIntervention)
    for one variable: its held-out interchange accuracy, and the cosines of the principal angles between
    it and the variable's true subspace (1: the same direction; 0: orthogonal)."""

    alignment: Alignment
    iia: IIAResult
    principal_cosines: tuple[float, ...]
    basis: np.ndarray  # [d_model, k], the learned subspace in residual coordinates
    final_loss: float


def das_alignment(
    model: Any,
    alignment: Alignment,
    train: Dataset,
    test: Dataset,
    *,
    steps: int = 120,
    batch_size: int = 32,
    lr: float = 3e-2,
    seed: int = 0,
) -> DASResult:
    """Learn, with pyvene, a rotation whose first k coordinates (k = the true subspace's size) carry the
    alignment's variable at the alignment's writer output, one rotation shared by every position (a
    representation per position, linked); trained so that the swapped run gives the program's
    counterfactual output (cross-entropy on the output columns; categorical outputs). Scored on `test`
    by `iia_of_outputs` and by principal angles against the true subspace."""
    import pyvene as pv
    import torch

    if model.codec.output_encoding != "categorical":
        raise CausalError("das_alignment trains on categorical outputs (cross-entropy on W_U columns)")
    layer, component = pyvene_component(model, alignment.component)
    labels = list(model.config.residual_labels)
    k = len(alignment.subspace)
    length = int(np.asarray(train.clean_ids).shape[1])
    torch.manual_seed(seed)
    reps = [pv.RepresentationConfig(layer, component, "pos", 1, low_rank_dimension=k, intervention_link_key=0)
            for _ in range(length)]
    rotated = pv.LowRankRotatedSpaceIntervention
    config = pv.IntervenableConfig(representations=reps, intervention_types=rotated)
    intervenable = pv.IntervenableModel(config, pyvene_model(model))
    columns = {repr(v): i for i, v in enumerate(model.codec.output_values)}
    pairs = counterfactuals(alignment, train.clean, train.corrupt, train.program, model.config.causal)
    keep = [i for i, (want, _) in enumerate(pairs) if want is not None]
    targets = torch.tensor([[columns[repr(v)] for v in pairs[i][0]] for i in keep])
    base_all = torch.as_tensor(np.asarray(train.clean_ids))[keep]
    source_all = torch.as_tensor(np.asarray(train.corrupt_ids))[keep]
    params = list({id(q): q for iv in intervenable.interventions.values()
                   for q in (iv[0] if isinstance(iv, tuple) else iv).parameters()}.values())
    optimizer = torch.optim.Adam(params, lr=lr)
    generator = torch.Generator().manual_seed(seed)
    loss = torch.tensor(float("nan"))

    def run(base: Any, source: Any) -> Any:
        where = [[[p]] * len(base) for p in range(length)]
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="Use of index_put_ on expanded tensors")
            return intervenable({"tokens": base}, [{"tokens": source}],
                                unit_locations={"sources->base": (where, where)})[1]

    for _ in range(steps):
        idx = torch.randint(0, len(keep), (min(batch_size, len(keep)),), generator=generator)
        out = run(base_all[idx], source_all[idx])
        logits = out[:, 1:].reshape(-1, out.shape[-1])  # BOS is no output
        loss = torch.nn.functional.cross_entropy(logits, targets[idx].reshape(-1))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    with torch.no_grad():
        out = run(torch.as_tensor(np.asarray(test.clean_ids)), torch.as_tensor(np.asarray(test.corrupt_ids)))
    iia = iia_of_outputs(model, alignment, test.clean, test.corrupt, test.program, out.numpy(),
                         backend="pyvene-das")
    first = next(iter(intervenable.interventions.values()))
    rotation = (first[0] if isinstance(first, tuple) else first).rotate_layer.weight.detach().numpy()
    true = np.zeros((len(labels), k))
    for j, label in enumerate(alignment.subspace):
        true[labels.index(label), j] = 1.0
    q_learned, _ = np.linalg.qr(rotation)
    cosines = np.linalg.svd(q_learned.T @ true, compute_uv=False)
    return DASResult(alignment, iia, tuple(float(c) for c in cosines), rotation, float(loss.detach()))
