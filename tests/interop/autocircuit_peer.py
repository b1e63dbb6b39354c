"""Runs inside .venv-autocircuit (auto-circuit 1.0.1, TransformerLens 2.x): real auto-circuit on
compiled models. Prints one JSON object of raw facts; tests/interop/test_autocircuit.py asserts on it."""

import json
import math
import sys

import torch
from auto_circuit.prune import run_circuits
from auto_circuit.prune_algos.ACDC import acdc_prune_scores
from auto_circuit.prune_algos.mask_gradient import mask_gradient_prune_scores

import verify
from rasp_compiler import compiling
from rasp_compiler.rasp.lib import LIBRARY
from verify import causal, formats, interop


def top_k_threshold(scores: dict, truth) -> float:
    """A threshold keeping the k best edges at auto-circuit's granularity (embeddings merged), k the
    number of truth edges there."""
    def key(e):
        return ("embeds" if e.writer in ("embed", "pos_embed") else e.writer, e.reader, e.input)

    merged: dict = {}
    for e, v in scores.items():
        merged[key(e)] = max(v, merged.get(key(e), -math.inf))
    k = len({key(e) for e in truth.edges})
    ranked = sorted(merged.values(), reverse=True)
    return (ranked[k - 1] + ranked[k]) / 2 if k < len(ranked) else ranked[-1] - 1


def run(name: str) -> dict:
    entry = LIBRARY[name]
    program = entry.builder()
    model = compiling.compile_rasp_to_model(program, entry.vocab, entry.max_seq_len)
    data = causal.make_dataset(model, program, n=32, seed=0)
    truth = causal.necessary_edges(model, data, "resample").circuit
    task = interop.autocircuit_task(model, data)
    out: dict = {"truth_edges": len(truth.edges), "n_edges": len(task.model.edges)}

    target = task.faithfulness_target
    acdc = acdc_prune_scores(task.model, task.train_loader, None, faithfulness_target=target)
    flat = torch.cat([t.flatten() for t in acdc.values()])
    out["acdc_has_inf"] = bool(torch.isinf(flat).any())
    out["acdc_finite_max"] = float(flat[torch.isfinite(flat)].max())
    found = formats.from_autocircuit_scores(acdc, model)
    r = verify.score(found, truth, threshold=0.01, merge_embeddings=True)
    out["acdc_f1"], out["acdc_fp"], out["acdc_fn"] = r.f1, r.false_positives, r.false_negatives

    eap = mask_gradient_prune_scores(
        task.model, task.train_loader, None, grad_function="logit",
        answer_function=task.answer_function, mask_val=0.0,
    )
    flat = torch.cat([t.flatten() for t in eap.values()])
    out["eap_has_negative"] = bool((flat < 0).any())
    edge_scores = formats.from_autocircuit_scores(eap, model)
    signed = formats.from_autocircuit_scores(eap, model, signed=True)
    out["abs_matches_signed"] = all(abs(signed[e]) == edge_scores[e] for e in signed)
    # EAP ranks edges; auto-circuit evaluates a ranking at edge counts (test_edge_counts): here the
    # true edge count at the tool's granularity, i.e. the threshold just below the k-th best score
    r = verify.score(edge_scores, truth, threshold=top_k_threshold(edge_scores, truth), merge_embeddings=True)
    out["eap_f1"], out["eap_auc"] = r.f1, r.roc_auc
    out["eap_fp"], out["eap_fn"] = r.false_positives, r.false_negatives
    # Resid Start: one auto-circuit source; its score is read onto both embeddings' edges
    embeds = {(e.reader, e.input): e for e in edge_scores if e.writer == "embed"}
    out["resid_start_shared"] = all(
        edge_scores[e] == edge_scores[embeds[(e.reader, e.input)]]
        for e in edge_scores if e.writer == "pos_embed" and (e.reader, e.input) in embeds
    )
    # one-head shape: our prune scores for the truth run in auto-circuit's own run_circuits
    ours = formats.to_autocircuit_scores(truth)
    out["our_shapes"] = {k: list(v.shape) for k, v in ours.items() if "hook_q_input" in k}
    outputs = run_circuits(task.model, task.test_loader, [len(truth.edges)], ours)
    out["run_circuits_ok"] = len(outputs) == 1
    # per-position prune scores (a leading sequence axis), read by the same reader
    per_pos = interop.autocircuit_task(model, data, per_position=True)
    eap_pos = mask_gradient_prune_scores(
        per_pos.model, per_pos.train_loader, None, grad_function="logit",
        answer_function=per_pos.answer_function, mask_val=0.0,
    )
    out["per_position_shape"] = list(next(iter(eap_pos.values())).shape)
    pos_scores = formats.from_autocircuit_scores(eap_pos, model)
    r = verify.score(pos_scores, truth, threshold=top_k_threshold(pos_scores, truth), merge_embeddings=True)
    out["per_position_f1"] = r.f1
    return out


if __name__ == "__main__":
    torch.manual_seed(0)
    names = sys.argv[1:] or ["reverse", "sort", "hist", "frac_prevs"]
    result = {name: run(name) for name in names}
    print(json.dumps(result, default=lambda x: x if not isinstance(x, float) or math.isfinite(x) else str(x)))
