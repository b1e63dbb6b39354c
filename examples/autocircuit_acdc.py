"""Compile reverse, run auto-circuit's ACDC on it unchanged, score against both truths (README)."""
from auto_circuit.prune_algos.ACDC import acdc_prune_scores

import verify
from rasp_compiler import compiling, lib, rasp
from verify import causal, formats, interop

program = lib.make_reverse(rasp.tokens)
model = compiling.compile_rasp_to_model(program, vocab={1, 2, 3}, max_seq_len=5)
data = causal.make_dataset(model, program, n=32, seed=0)
task = interop.autocircuit_task(model, data)
scores = acdc_prune_scores(task.model, task.train_loader, None, faithfulness_target=task.faithfulness_target)
found = formats.from_autocircuit_scores(scores, model)  # edge -> |score|; ACDC's kept edges rank first
truths = {"structural": verify.ground_truth(model), "ablation": causal.necessary_edges(model, data)}
for name, truth in truths.items():  # ACDC's circuit at tau 0.01, at auto-circuit's granularity:
    print(name, verify.score(found, truth, threshold=0.01, merge_embeddings=True))
