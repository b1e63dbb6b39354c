"""Runs inside .venv-tl4 (TransformerLens 4.3): every library model exported as a TransformerBridge, its
logits compared with the model's own PyTorch module on random inputs. Prints one JSON object of raw
facts; tests/interop/test_tl4_bridge.py asserts on it."""

import json
import random
import sys

import numpy as np
import torch

from rasp_compiler.compiler import compiling
from rasp_compiler.model.export import tl_version, to_hooked_transformer, to_transformer_bridge
from rasp_compiler.rasp.lib import LIBRARY

CAUSAL = ("causal_induction", "frac_prevs", "hist", "reverse")


def compare(model, entry, rng) -> dict:  # noqa: ANN001
    """The bridge's logits against the model's own PyTorch module on 32 random inputs."""
    bridge = to_transformer_bridge(model)
    vocab = sorted(entry.vocab, key=repr)
    rows = []
    for _ in range(32):
        n = rng.randint(1, entry.max_seq_len)
        if entry.distinct_tokens:
            xs = rng.sample(vocab, min(n, len(vocab)))
        else:
            xs = [rng.choice(vocab) for _ in range(n)]
        rows.append(model.encode([model.codec.bos, *xs]))
    diffs, same = [], True
    for ids in rows:
        t = torch.tensor([ids])
        with torch.no_grad():
            got = bridge(t, return_type="logits")[0].numpy()
            want = model.to_torch()(t)[0].detach().numpy()
        diffs.append(float(np.abs(got - want).max()))
        same &= model.codec.decode(got) == model.codec.decode(want)
    _, cache = bridge.run_with_cache(torch.tensor([rows[0]]))
    return {"max_abs_diff": max(diffs), "decoded_equal": bool(same), "type": type(bridge).__name__,
            "has_resid_hook": any("hook_resid_post" in k for k in cache.keys()),
            "attention_dir": str(bridge.cfg.attention_dir)}


def main() -> None:
    out: dict = {"version": tl_version(), "models": {}, "causal_models": {}}
    rng = random.Random(0)
    for name, entry in LIBRARY.items():
        model = compiling.compile_rasp_to_model(entry.builder(), entry.vocab, entry.max_seq_len)
        out["models"][name] = compare(model, entry, rng)
        if name in CAUSAL:
            causal = compiling.compile_rasp_to_model(entry.builder(), entry.vocab, entry.max_seq_len,
                                                     causal=True)
            out["causal_models"][name] = compare(causal, entry, rng)
    try:
        to_hooked_transformer(model)
        out["hooked_transformer_error"] = ""
    except ImportError as e:
        out["hooked_transformer_error"] = str(e)
    print(json.dumps(out))


if __name__ == "__main__":
    sys.exit(main())
