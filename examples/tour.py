"""The README's tour, runnable: `python examples/tour.py` (tests/test_readme_tour.py runs it too)."""

import tempfile

import verify
from rasp_compiler import rasp
from rasp_compiler.compiler import compiling
from rasp_compiler.engine import Engine
from rasp_compiler.rasp import lib
from verify import causal, discovery

program = lib.make_reverse(rasp.tokens)  # any tracr program: change only the import
print(rasp.evaluate(program, [1, 2, 3]))  # [3, 2, 1]  (the evaluator is the semantics)

model = compiling.compile_rasp_to_model(program, vocab={1, 2, 3}, max_seq_len=5, compiler_bos="BOS")
print(model.apply(["BOS", 1, 2, 3]).decoded)  # ['BOS', 3, 2, 1], as tracr
with tempfile.TemporaryDirectory() as d:
    model.save(d)  # safetensors + JSON (one manifest hash over every field), never pickle

truth = verify.ground_truth(model)  # from the compiler's annotation
assert truth == verify.ground_truth(model, method="weights")  # ... and, independently, from the weights
print(truth.describe())  # component | RASP op | reads | writes

engine = Engine(model)  # C++: forward, cache, node/edge/subspace patches, sweeps
data = causal.make_dataset(model, program, n=32, seed=0)  # clean + resampled corrupted inputs
found = discovery.acdc(model, data, ablation="resample")  # baselines run on engine sweeps
print(verify.score(found.scores, truth))  # precision/recall/F1/ROC-AUC vs the structural truth
needed = causal.necessary_edges(model, data, ablation="resample")
print(verify.score(found.scores, needed.circuit))  # ... and vs the ablation-aware truth
