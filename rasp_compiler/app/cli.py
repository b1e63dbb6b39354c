"""The `rasp-compiler` command: compile, run, circuit, suite, verify, fuzz, demo, list.

Every command reports a problem it can name (a missing file, an unknown component, a program file
without the function) as one line on stderr and exits with status 1 (2 for bad usage); `--traceback`
shows the full Python traceback instead.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

import verify
from rasp_compiler import __version__, rasp
from rasp_compiler.app import pictures, report, suite
from rasp_compiler.compiler import compiling
from rasp_compiler.compiler.options import QK_ENCODINGS
from rasp_compiler.model import load
from rasp_compiler.rasp.lib import LIBRARY
from rasp_compiler.rasp.loading import ObjectLoadError, is_file_spec, load_object
from rasp_compiler.rasp.source import from_source
from rasp_compiler.testing import fuzz
from rasp_compiler.testing.runner import RunnerError
from verify import formats, tool_fuzz
from verify.circuit import CircuitError
from verify.draw import draw_circuit
from verify.formats import read_circuit_file
from verify.tool_fuzz import ToolFuzzError, scoring_keywords

__all__ = ["CLIError", "load_program", "main", "parse_input"]

PROG = "rasp-compiler"


class CLIError(Exception):
    """A problem with what the user asked for; printed as one line, exit status 1."""


# ----------------------------------------------------------------------------------------------- helpers


def _parse_value(text: str) -> Any:
    """A vocab value from the command line: an int or float if it reads as one, else the string."""
    for cast in (int, float):
        try:
            return cast(text)
        except ValueError:
            pass
    return text


def _parse_vocab(text: str) -> list[Any]:
    items = [t.strip() for t in text.split(",")]
    if not all(items):
        raise CLIError(f"--vocab {text!r}: empty token (give comma-separated tokens, e.g. a,b,c or 1,2,3)")
    return [_parse_value(t) for t in items]


def load_program(
    target: str, vocab: str | None = None, max_seq_len: int | None = None
) -> tuple[Any, list[Any], int, str]:
    """(program, vocab, max_seq_len, name) for a library name or `path/to/file.py:function`.

    A program file's function is called without arguments and must return a RASP SOp (or the name may
    be bound to the SOp itself). Vocab and length come from the flags, else from `VOCAB` and
    `MAX_SEQ_LEN` in the file; a library program's defaults can be overridden by the flags.
    """

    if is_file_spec(target):
        path, func = Path(target.rsplit(":", 1)[0]), target.rsplit(":", 1)[1]
        try:
            obj, module = load_object(target)
        except ObjectLoadError as e:
            raise CLIError(str(e)) from None
        if callable(obj) and not isinstance(obj, rasp.RASPExpr):
            try:
                obj = obj()
            except TypeError as e:
                raise CLIError(f"{path}:{func} must take no arguments and return a RASP program ({e})") from e
        if not isinstance(obj, rasp.SOp):
            raise CLIError(f"{path}:{func} gives a {type(obj).__name__}, not a RASP SOp")
        file_vocab = getattr(module, "VOCAB", None)
        file_len = getattr(module, "MAX_SEQ_LEN", None)
        vocab_list = _parse_vocab(vocab) if vocab else (list(file_vocab) if file_vocab is not None else None)
        length = max_seq_len if max_seq_len is not None else file_len
        if vocab_list is None or length is None:
            raise CLIError(
                f"{path}:{func}: give --vocab and --max-seq-len (or define VOCAB and MAX_SEQ_LEN in the file)"
            )
        return obj, vocab_list, int(length), func
    if target not in LIBRARY:
        close = [n for n in sorted(LIBRARY) if target.lower() in n or n in target.lower()]
        hint = f"; did you mean {', '.join(close[:4])}?" if close else "; `rasp-compiler list` shows them"
        raise CLIError(f"{target!r} is neither a library program nor path/to/file.py:function{hint}")
    entry = LIBRARY[target]
    return (
        entry.builder(),
        _parse_vocab(vocab) if vocab else sorted(entry.vocab, key=repr),
        max_seq_len if max_seq_len is not None else entry.max_seq_len,
        target,
    )


def _load_model(directory: str) -> Any:

    return load(directory)


def parse_input(text: str, vocab: Sequence[Any]) -> list[Any]:
    """One input from the command line: a JSON list, tokens separated by commas or spaces, or the
    characters of one word when every character is a token ("abc")."""
    by_text = {str(v): v for v in vocab}
    text = text.strip()
    if text.startswith("["):
        try:
            items = json.loads(text)
        except json.JSONDecodeError as e:
            raise CLIError(f"input {text!r} is not a valid JSON list ({e})") from None
        if not isinstance(items, list):
            raise CLIError(f"input {text!r} must be a JSON list")
        parts = items
    else:
        parts = [p for p in re.split(r"[,\s]+", text) if p]
        if len(parts) == 1 and parts[0] not in by_text and all(ch in by_text for ch in parts[0]):
            parts = list(parts[0])
    out = []
    for p in parts:
        key = p if isinstance(p, str) else str(p)
        if isinstance(p, str) and p in by_text:
            out.append(by_text[p])
        elif not isinstance(p, str) and p in list(vocab):
            out.append(p)
        elif key in by_text:
            out.append(by_text[key])
        else:
            raise CLIError(
                f"token {p!r} in input {text!r} is not in the model's vocabulary {[v for v in vocab]}"
            )
    if not out:
        raise CLIError("empty input (give at least one token)")
    return out


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.4g}"
    return str(v)


# ------------------------------------------------------------------------------------------- circuit files


# ----------------------------------------------------------------------------------------------- commands


def cmd_list(args: argparse.Namespace) -> int:

    width = max(len(n) for n in LIBRARY)
    for name in sorted(LIBRARY):
        e = LIBRARY[name]
        vocab = ",".join(str(v) for v in sorted(e.vocab, key=repr))
        print(f"{name.ljust(width)}  vocab {vocab:<10} max_seq_len {e.max_seq_len}  {e.summary}")
    return 0


def cmd_compile(args: argparse.Namespace) -> int:

    program, vocab, max_seq_len, name = load_program(args.target, args.vocab, args.max_seq_len)
    try:
        model = compiling.compile_rasp_to_model(
            program,
            vocab,
            max_seq_len,
            compiler_pad=args.pad if args.pad else None,
            causal=args.causal,
            qk_encoding=args.qk_encoding,
        )
    except (compiling.CompileError, rasp.RASPError) as e:
        raise CLIError(f"cannot compile {name}: {e}") from None
    out = Path(args.out or Path("out") / name)
    model.save(out)
    truth = verify.ground_truth(model)
    (out / "circuit.json").write_text(json.dumps(formats.to_json(truth), indent=1, sort_keys=True) + "\n")
    cfg = model.config
    print(
        f"compiled {name}{' (causal)' if cfg.causal else ''}: {cfg.n_layers} layers, d_model {cfg.d_model}, "
        f"heads per layer {cfg.heads_per_layer}, MLP widths {cfg.mlp_width_per_layer}, {model.n_params} "
        f"parameters ({sum(int(np.count_nonzero(w)) for w in model.weights.values())} non-zero)"
    )
    print(
        f"ground truth: {len(truth.node_names())} components, {len(truth.edges)} edges "
        f"(rasp-compiler circuit {out})"
    )
    print(f"saved to {out}/ (weights.safetensors, model.json, circuit.json)")
    return 0


def cmd_run(args: argparse.Namespace) -> int:
    model = _load_model(args.model)
    texts = list(args.inputs)
    if args.file:
        f = Path(args.file)
        if not f.is_file():
            raise CLIError(f"input file {f} does not exist")
        texts += [line for line in f.read_text(encoding="utf-8").splitlines() if line.strip()]
    if not texts:
        raise CLIError('no inputs: give them as arguments (e.g. "a b c") or with --file')
    vocab = model.codec.vocab
    inputs = [parse_input(t, vocab) for t in texts]
    for x in inputs:
        if len(x) > model.max_seq_len:
            raise CLIError(f"input {x} has {len(x)} tokens; this model takes at most {model.max_seq_len}")
    outs = model.apply_batch([[model.codec.bos, *x] for x in inputs])
    for x, y in zip(inputs, outs, strict=True):
        if args.json:
            print(json.dumps({"input": x, "output": y[1:]}))
        else:
            print(f"{' '.join(_fmt(v) for v in x)}  ->  {' '.join(_fmt(v) for v in y[1:])}")
    return 0


def cmd_circuit(args: argparse.Namespace) -> int:

    model = _load_model(args.model)
    truth = verify.ground_truth(model, method=args.method)
    if args.format == "table":
        print(
            f"ground-truth circuit of {truth.output!r} ({args.method}): "
            f"{len(truth.node_names())} components, "
            f"{len(truth.edges)} of {len(truth.universe('edge'))} edges"
        )
        print(truth.describe())
    else:
        if args.format == "json":
            doc: Any = formats.to_json(truth)
        elif args.format == "acdc":
            doc = sorted(
                (
                    [c, list(ci), p, list(pi), bool(on)]
                    for (c, ci, p, pi), on in formats.to_acdc(truth).items()
                ),
                key=json.dumps,
            )
        elif args.format == "autocircuit":
            doc = sorted(formats.to_autocircuit(truth))
        else:
            doc = formats.to_eapig_json(truth)
        text = json.dumps(doc, indent=1, sort_keys=True) + "\n"
        if args.out:
            Path(args.out).write_text(text)
            print(f"wrote {args.format} circuit to {args.out}")
        else:
            sys.stdout.write(text)
    if args.draw:
        path = _draw_truth(model, truth, args.draw)
        print(f"diagram: {path}")
    if args.pictures:
        _pictures(model, truth, Path(args.pictures), args.input)
    return 0


def _draw_truth(model: Any, truth: Any, path: str | Path) -> Any:
    """The ground-truth circuit diagram, heads placed by the model's layout; returns the written path."""

    return draw_circuit(
        truth,
        path, heads_per_layer=model.config.heads_per_layer, title=f"ground-truth circuit of {truth.output}"
    )


def _pictures(model: Any, truth: Any, out: Path, input_text: str | None) -> None:
    """Circuit diagram, residual-stream picture and the attention of every circuit head on one input."""

    out.mkdir(parents=True, exist_ok=True)
    vocab = model.codec.vocab
    if input_text:
        tokens = parse_input(input_text, vocab)
        if len(tokens) > model.max_seq_len:
            raise CLIError(f"--input has {len(tokens)} tokens; this model takes at most {model.max_seq_len}")
    else:
        tokens = [vocab[i % len(vocab)] for i in range(model.max_seq_len)]
    written = [
        _draw_truth(model, truth, out / "circuit.png"),
        pictures.residual_stream(model, out / "residual_stream.png", highlight=truth.node_names()),
    ]
    for node in truth.node_names():
        if ".H" in node:
            layer, head = (int(x) for x in node[1:].split(".H"))
            written.append(
                pictures.attention_pattern(model, tokens, layer, head, out / f"attention_{node}.png")
            )
    print(f"pictures ({len(written)}) in {out}/: " + ", ".join(Path(p).name for p in written))


def _ablation_truth(model: Any, args: argparse.Namespace) -> Any:
    """The ablation-aware truth on a dataset drawn from the model's own program source."""
    from verify import causal

    if not model.program_source:
        raise CLIError(f"{args.model} has no program source; --truth ablation needs the program")
    try:
        program = from_source(model.program_source)
    except Exception as e:  # noqa: BLE001 - say why the saved source does not rebuild the program
        raise CLIError(f"{args.model}: its program.py does not rebuild the program ({e})") from None
    data = causal.make_dataset(model, program, n=args.n, seed=args.seed)
    return causal.necessary_edges(model, data, args.ablation).circuit


def _verify_dictionary(model: Any, args: argparse.Namespace) -> int:
    """`verify MODEL dictionary.safetensors --site S`: a learned dictionary against the true features."""
    from safetensors import SafetensorError
    from safetensors.numpy import load_file

    from verify import features

    if not args.site:
        sites = ", ".join(features.residual_sites(model) + features.component_sites(model))
        raise CLIError(f"scoring a dictionary needs --site (one of: {sites})")
    path = Path(args.circuit)
    try:
        tensors = load_file(str(path))
    except (SafetensorError, OSError, ValueError) as e:
        raise CLIError(f"{path}: not a readable safetensors file ({e})") from None
    d_model = int(model.config.d_model)
    if args.tensor:
        if args.tensor not in tensors:
            raise CLIError(f"{path} has no tensor {args.tensor!r} (it has: {', '.join(sorted(tensors))})")
        decoder = tensors[args.tensor]
    else:
        fits = {k: v for k, v in tensors.items() if v.ndim == 2 and v.shape[1] == d_model}
        if len(fits) != 1:
            found = ", ".join(f"{k} {list(v.shape)}" for k, v in sorted(tensors.items()))
            raise CLIError(f"{path}: name the decoder with --tensor (tensors [n, {d_model}]: {len(fits)}; "
                           f"found: {found})")
        decoder = next(iter(fits.values()))
    try:
        truth = features.feature_dictionary(model, args.site)
        result = features.score_dictionary(decoder, truth)
    except CircuitError as e:
        raise CLIError(str(e)) from None
    if args.json:
        print(json.dumps({"mean_max_cosine": result.mean_max_cosine, "recovered": result.recovered,
                          "missing": result.missing, "split": result.split,
                          "merged": {str(k): v for k, v in result.merged.items()},
                          "unmatched": result.unmatched}, indent=1, sort_keys=True))
        return 0
    print(f"dictionary {path} ({decoder.shape[0]} latents) vs the {len(truth)} true features at {args.site}:")
    print(result.describe())
    return 0


def cmd_verify(args: argparse.Namespace) -> int:

    model = _load_model(args.model)
    if str(args.circuit).endswith(".safetensors"):
        return _verify_dictionary(model, args)
    structural = verify.ground_truth(model)
    try:
        circuit, scores, form = read_circuit_file(args.circuit, structural, args.threshold)
    except CircuitError as e:
        raise CLIError(str(e)) from None
    truth = structural if args.truth == "structural" else _ablation_truth(model, args)
    levels = {"both": ["node", "edge"], "all": ["node", "edge", "subspace"]}.get(args.level, [args.level])
    results = {}
    for level in levels:
        # the circuit decides precision/recall/F1; per-edge scores, when the file has them, rank for the ROC
        r = verify.score(circuit, truth, level, merge_embeddings=args.merge_embeddings)
        if scores is not None and level == "edge":
            ranked = verify.score(scores, truth, level, threshold=args.threshold,
                                  merge_embeddings=args.merge_embeddings)
            r.roc_auc, r.fpr, r.tpr, r.thresholds = ranked.roc_auc, ranked.fpr, ranked.tpr, ranked.thresholds
        results[level] = r
    if args.json:
        print(
            json.dumps(
                {
                    lvl: {
                        "precision": r.precision,
                        "recall": r.recall,
                        "f1": r.f1,
                        "roc_auc": r.roc_auc,
                        "tp": r.tp,
                        "fp": r.fp,
                        "fn": r.fn,
                        "false_positives": r.false_positives,
                        "false_negatives": r.false_negatives,
                    }
                    for lvl, r in results.items()
                },
                indent=1,
                sort_keys=True,
            )
        )
        return 0
    print(
        f"model {args.model} (output {truth.output!r}); discovered circuit {args.circuit} ({form}): "
        f"{len(circuit.node_names())} components, {len(circuit.edges)} edges; truth: "
        + ("structural" if args.truth == "structural"
           else f"ablation-aware ({args.ablation}, {args.n} pairs, seed {args.seed})")
        + (", embeddings merged" if args.merge_embeddings else "")
    )
    print(
        f"{'level':<9} {'precision':>9} {'recall':>7} {'F1':>6} {'ROC-AUC':>8} "
        f"{'TP':>4} {'FP':>4} {'FN':>4}  truth"
    )
    for lvl, r in results.items():
        print(
            f"{lvl:<9} {r.precision:>9.3f} {r.recall:>7.3f} {r.f1:>6.3f} {r.roc_auc:>8.3f} "
            f"{r.tp:>4} {r.fp:>4} "
            f"{r.fn:>4}  {r.n_positive} of {r.n_positive + r.n_negative}"
        )
    for lvl, r in results.items():
        if r.false_negatives:
            print(f"missed ({lvl}): {_first_names(r.false_negatives)}")
        if r.false_positives:
            print(f"extra ({lvl}): {_first_names(r.false_positives)}")
    return 0


def _first_names(names: Sequence[str], most: int = 12) -> str:
    """The first `most` names, comma-separated, then how many were left out."""
    more = f" ... (+{len(names) - most})" if len(names) > most else ""
    return ", ".join(names[:most]) + more


def _ray_choice(args: argparse.Namespace) -> tuple[bool, str | None]:
    """(use Ray?, cluster address or None for a local instance), checked once for `suite` and `fuzz`."""
    if args.ray is None:
        return False, None
    if args.workers is not None:
        raise CLIError("--ray and --workers exclude each other (Ray decides the parallelism)")
    try:
        import ray  # noqa: F401
    except ImportError:
        raise CLIError("--ray needs the optional 'ray' package: pip install 'rasp-compiler[ray]'") from None
    return True, None if args.ray == "local" else args.ray


def cmd_features(args: argparse.Namespace) -> int:
    from verify import features

    model = _load_model(args.model)
    out = Path(args.out) if args.out else Path(args.model) / "features"
    if args.activations < 0:
        raise CLIError(f"--activations must be >= 0, got {args.activations}")
    inputs = None
    if args.activations:
        from rasp_compiler.transforms.variants import all_inputs

        inputs = [x[1:] for x in all_inputs(model, max_inputs=args.activations, seed=0)]
    try:
        dictionaries = features.save_features(model, out, inputs=inputs)
    except CircuitError as e:
        raise CLIError(str(e)) from None
    written = "features.safetensors" + (f", feature_activations.safetensors on {len(inputs)} inputs"
                                        if inputs else "")
    print(f"true features of {args.model} per site (written to {out}/features.json, {written}):")
    for d in dictionaries:
        variables = sorted({x.variable for x in d.directions})
        print(f"  {d.site:<26} {len(d):>4} features  {', '.join(variables)}")
    return 0


def cmd_evaluate(args: argparse.Namespace) -> int:
    from rasp_compiler.app.evaluate import evaluate_suite

    try:
        ev = evaluate_suite(
            args.tool,
            args.suite,
            ablation=args.ablation,
            threshold=args.threshold,
            merge_embeddings=args.merge_embeddings,
            progress=not args.quiet,
        )
    except (ToolFuzzError, suite.SuiteError) as e:
        raise CLIError(str(e)) from None
    print(ev.report())
    return 0


def cmd_suite(args: argparse.Namespace) -> int:

    use_ray, ray_address = _ray_choice(args)
    try:
        noise = args.noise
        variants = suite.SuiteVariants(
            multi=args.multi,
            noise_heads=args.noise_heads if args.noise_heads is not None else (2 if noise else 0),
            noise_neurons=args.noise_neurons if args.noise_neurons is not None else (4 if noise else 0),
            cancel_pairs=args.cancel_pairs if args.cancel_pairs is not None else (1 if noise else 0),
            weight_noise=args.weight_noise if args.weight_noise is not None else (0.01 if noise else 0.0),
            rotate=args.rotate,
            compress=args.compress,
            compress_method=args.compress_method,
            causal=args.causal,
        )
        summary = suite.generate_suite(
            args.n,
            args.seed,
            args.out,
            workers=args.workers,
            pairs=args.pairs,
            use_ray=use_ray,
            ray_address=ray_address,
            progress=not args.quiet,
            variants=variants,
        )
    except (suite.SuiteError, RunnerError) as e:
        raise CLIError(str(e)) from None
    print(summary.report())
    return 0 if summary.ok else 1


def cmd_fuzz(args: argparse.Namespace) -> int:

    use_ray, ray_address = _ray_choice(args)
    try:
        limits = fuzz.parse_limits(args.limit) | ({"max_ops": args.max_ops} if args.max_ops else {})
        limits |= {"causal": True} if args.causal else {}
    except ValueError as e:
        raise CLIError(str(e)) from None
    spread = {
        "workers": args.workers or 1,
        "use_ray": use_ray,
        "ray_address": ray_address,
    }
    if args.target == "tool":
        if not args.tool:
            raise CLIError("fuzz tool needs --tool: acdc, activation_patching, eap, eap_ig, "
                           "subnetwork_probing, package.module:function or path/to/file.py:function")
        try:
            summary = tool_fuzz.run_tool_campaign(
                args.programs,
                args.seed,
                tool=args.tool,
                progress=not args.quiet,
                **(scoring_keywords(args) | {"limits": limits or None}),
                as_hooked_transformer=args.tl,
                **spread,
            )
        except ToolFuzzError as e:
            raise CLIError(str(e)) from None
        print(summary.report())
        if args.json:
            Path(args.json).write_text(json.dumps(summary.to_json(), indent=1) + "\n", encoding="utf-8")
        return 0 if summary.ok else 1
    backends = tuple(b.strip() for b in args.backends.split(",")) if args.backends else None
    save_dir = None if args.no_save else Path(args.save_dir or "out/fuzz_failures")
    try:
        summary = fuzz.run_compiler_campaign(
            args.programs,
            args.seed,
            inputs_per_program=args.inputs,
            backends=backends,
            shrink=not args.no_shrink,
            save_dir=save_dir,
            progress=not args.quiet,
            limits=limits or None,
            **spread,
        )
    except ValueError as e:
        raise CLIError(str(e)) from None
    print(summary.report())
    return 0 if summary.ok else 1


def cmd_demo(args: argparse.Namespace) -> int:

    programs = [p.strip() for p in args.programs.split(",")] if args.programs else None
    result = report.run_demo(args.out, programs=programs, focus=args.focus, progress=not args.quiet)
    print(result.summary())
    return 0 if result.ok else 1


# ----------------------------------------------------------------------------------------------- parser


def _add_ray_option(c: argparse.ArgumentParser, help_text: str) -> None:
    """`--ray [ADDRESS]`: None when absent, "local" when given bare."""
    c.add_argument("--ray", nargs="?", const="local", default=None, metavar="ADDRESS", help=help_text)


def build_parser() -> argparse.ArgumentParser:
    """The argument parser (exposed for documentation and tests)."""
    p = argparse.ArgumentParser(
        prog=PROG,
        description="Compile RASP programs into transformers whose circuits are known exactly; run them; "
        "build benchmark suites; score discovered circuits against the truth.",
        epilog="Start with `rasp-compiler demo`. Each command has its own --help.",
    )
    p.add_argument(
        "--traceback", action="store_true", help="show Python tracebacks instead of one-line errors"
    )

    p.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = p.add_subparsers(dest="command", metavar="COMMAND", required=True)

    c = sub.add_parser("list", help="list the library programs", description="List the library programs.")
    c.set_defaults(func=cmd_list)

    c = sub.add_parser(
        "compile",
        help="compile a program into a model directory",
        description="Compile a library program (by name) or path/to/file.py:function into a model "
        "directory (weights.safetensors, model.json, circuit.json).",
    )
    c.add_argument("target", help="library program name (see `list`) or path/to/file.py:function")
    c.add_argument("--out", "-o", help="model directory to write (default: out/<name>)")
    c.add_argument(
        "--vocab", help="comma-separated input tokens (default: the library's, or VOCAB in the file)"
    )
    c.add_argument("--max-seq-len", type=int, help="longest input (default: the library's, or MAX_SEQ_LEN)")
    c.add_argument("--pad", help="add a padding token with this name")
    c.add_argument(
        "--causal",
        action="store_true",
        help="a decoder-only model: position i attends to positions 0..i and answers as the program does "
        "on the first i+1 tokens (refused, naming the op, where the program cannot be computed that way)",
    )
    c.add_argument(
        "--qk-encoding",
        choices=QK_ENCODINGS,
        default="smallest",
        help="how each head's predicate table is factored into W_Q and W_K: the fewest non-zero weights "
        "(default), or tracr's layout; scores, outputs and the residual layout are the same",
    )
    c.set_defaults(func=cmd_compile)

    c = sub.add_parser(
        "run",
        help="run a model on inputs",
        description="Run a compiled model. Each input is one argument: tokens separated by spaces "
        'or commas, a JSON list, or a word whose characters are tokens ("abc").',
    )
    c.add_argument("model", help="model directory")
    c.add_argument("inputs", nargs="*", help="inputs, e.g. \"a b c\" or abc or '[1, 2, 3]'")
    c.add_argument("--file", "-f", help="file with one input per line")
    c.add_argument("--json", action="store_true", help="print one JSON object per input")
    c.set_defaults(func=cmd_run)

    c = sub.add_parser(
        "circuit",
        help="print or draw a model's ground-truth circuit",
        description="Print the ground-truth circuit (component, RASP op, reads, writes), write it "
        "in a tool's format, and/or draw the diagram.",
    )
    c.add_argument("model", help="model directory")
    c.add_argument("--draw", metavar="PATH", help="write the circuit diagram (.png or .svg)")
    c.add_argument(
        "--pictures",
        metavar="DIR",
        help="write circuit.png, residual_stream.png and attention_<head>.png for every circuit head",
    )
    c.add_argument("--input", help="the input for the attention pictures (default: the vocab repeated)")
    c.add_argument(
        "--format",
        default="table",
        choices=["table", "json", "acdc", "autocircuit", "eapig"],
        help="what to print (default: a table)",
    )
    c.add_argument("--out", help="write the chosen format to this file instead of stdout")
    c.add_argument(
        "--method",
        default="annotation",
        choices=["annotation", "weights"],
        help="derive the truth from the compiler's annotation (default) or from the weights alone",
    )
    c.set_defaults(func=cmd_circuit)

    c = sub.add_parser(
        "suite",
        help="generate a reproducible benchmark suite",
        description="Compile N models (library + generated programs) with ground-truth circuits, "
        "datasets and cards. Resumable; the same seed gives identical files.",
    )
    c.add_argument("--n", type=int, required=True, help="number of models")
    c.add_argument("--seed", type=int, default=0, help="suite seed (default 0)")
    c.add_argument("--out", required=True, help="suite directory")
    c.add_argument("--workers", type=int, default=None, help="worker processes (default: all cores)")
    c.add_argument("--pairs", type=int, default=32, help="clean/corrupted input pairs per model (default 32)")
    _add_ray_option(c, "run the work items as Ray tasks (an existing cluster's ADDRESS, or a local instance)")
    c.add_argument("--quiet", action="store_true", help="no progress bar")
    g = c.add_argument_group("variants (harder ground truth; recorded in each card and the index)")
    g.add_argument(
        "--multi",
        type=int,
        default=1,
        metavar="K",
        help="K programs per model in one residual stream (each output its own circuit)",
    )
    g.add_argument(
        "--noise",
        action="store_true",
        help="distractors: 2 heads, 4 neurons, 1 cancelling pair, weight noise 0.01 (each overridable below)",
    )
    g.add_argument("--noise-heads", type=int, metavar="N", help="distractor heads")
    g.add_argument("--noise-neurons", type=int, metavar="N", help="distractor MLP neurons")
    g.add_argument("--cancel-pairs", type=int, metavar="N", help="cancelling head pairs and neuron pairs")
    g.add_argument(
        "--weight-noise", type=float, metavar="X", help="relative weight noise (outputs stay exact)"
    )
    g.add_argument("--rotate", action="store_true", help="random orthogonal residual basis")
    g.add_argument(
        "--compress",
        type=float,
        metavar="FRACTION",
        help="residual width = FRACTION * d_model (approximate; accuracy recorded)",
    )
    g.add_argument(
        "--compress-method",
        choices=("random", "pca", "learned"),
        default="pca",
        help="projection for --compress (default pca)",
    )
    g.add_argument(
        "--causal",
        action="store_true",
        help="decoder-only models: each position attends to itself and earlier ones (checked against "
        "the prefix evaluation; library programs a causal compile refuses are left out)",
    )
    c.set_defaults(func=cmd_suite)

    c = sub.add_parser(
        "verify",
        help="score a discovered circuit against a model's truth",
        description="Score a discovered circuit file (verify JSON, ACDC, auto-circuit, EAP-IG, or "
        "edge names/scores) against the model's ground truth; or a learned dictionary "
        "(.safetensors with a [n_latents, d_model] decoder, --site) against the true features.",
    )
    c.add_argument("model", help="model directory (a suite's models/<id> works)")
    c.add_argument("circuit", help="discovered circuit file (JSON)")
    c.add_argument(
        "--level",
        default="both",
        choices=["both", "all", "node", "edge", "subspace"],
        help="both: node and edge (default); all: also subspace",
    )
    c.add_argument("--threshold", type=float, default=0.0, help="scores above this are 'in the circuit'")
    c.add_argument("--truth", choices=["structural", "ablation"], default="structural",
                   help="score against the structural truth (default) or the ablation-aware one")
    c.add_argument("--ablation", choices=["resample", "mean", "zero"], default="resample",
                   help="the ablation of --truth ablation (default resample)")
    c.add_argument("--n", type=int, default=32, help="--truth ablation: dataset size (default 32)")
    c.add_argument("--seed", type=int, default=0, help="--truth ablation: dataset seed (default 0)")
    c.add_argument("--merge-embeddings", action="store_true",
                   help="embed and pos_embed as one input (auto-circuit's Resid Start, ACDC's granularity)")
    c.add_argument("--site", help="a dictionary (.safetensors): the residual site it was trained on")
    c.add_argument("--tensor", help="a dictionary: the decoder tensor's name ([n_latents, d_model])")
    c.add_argument("--json", action="store_true", help="print the scores as JSON")
    c.set_defaults(func=cmd_verify)

    c = sub.add_parser(
        "features",
        help="the true features at every site (for scoring SAEs, transcoders and probes)",
        description="Every site's true features (residual stream, head and MLP outputs: one direction per "
        "value of each RASP variable, in the model's own basis; MLP hidden layers: one per neuron) printed "
        "and written as features.json + features.safetensors; with --activations, each feature's "
        "activation on inputs too (feature_activations.safetensors).",
    )
    c.add_argument("model", help="model directory")
    c.add_argument("--out", help="output directory (default MODEL/features)")
    c.add_argument("--activations", type=int, default=0, metavar="N",
                   help="also write each feature's activation on every input when there are at most N, "
                   "else on N random ones (seed 0)")
    c.set_defaults(func=cmd_features)

    c = sub.add_parser(
        "evaluate",
        help="score a discovery method on every model of a suite, against both truths",
        description="Run a circuit-discovery method on every model of a suite (`rasp-compiler suite`) and "
        "score it against the structural and the ablation-aware truth: per-model scores, means with 95% "
        "bootstrap intervals, the worst models with the reason for each missed or extra edge, ROC "
        "curves. Results go to SUITE/evaluations/<tool>/; a re-run resumes.",
    )
    c.add_argument("suite", help="suite directory (from `rasp-compiler suite`)")
    c.add_argument(
        "--tool",
        required=True,
        help="acdc, activation_patching, eap, eap_ig, subnetwork_probing, package.module:function or "
        "path/to/file.py:function, called as function(model, dataset)",
    )
    c.add_argument("--ablation", choices=("resample", "mean", "zero"), default="resample",
                   help="the ablation of the ablation-aware truth (and of the built-in tools)")
    c.add_argument("--threshold", type=float, default=0.0,
                   help="scores above this are 'in the circuit' (default 0), as in `verify`")
    c.add_argument("--merge-embeddings", action="store_true",
                   help="embed and pos_embed as one input (auto-circuit's Resid Start; ACDC's graph)")
    c.add_argument("--quiet", action="store_true", help="no progress bar")
    c.set_defaults(func=cmd_evaluate)

    c = sub.add_parser(
        "fuzz",
        help="fuzz the compiler, or a circuit-discovery tool, with random programs",
        description="Random programs from the generator: `fuzz compiler` compares compiled models with "
        "the evaluator; `fuzz tool` scores a discovery method against the known circuits. Each has its "
        "own --help.",
    )
    targets = c.add_subparsers(dest="target", metavar="{compiler,tool}", required=True)

    def common(f: argparse.ArgumentParser, n_inputs: int) -> None:
        f.add_argument("--programs", type=int, default=100, help="number of random programs (default 100)")
        f.add_argument("--seed", type=int, default=0, help="campaign seed: program i depends on (seed, i)")
        f.add_argument("--inputs", type=int, default=n_inputs, help=f"per program (default {n_inputs})")
        f.add_argument("--max-ops", type=int, help="generator steps per program")
        f.add_argument("--limit", action="append", default=[], metavar="NAME=VALUE",
                       help="any generator Limits field, e.g. --limit constant_sop=true --limit max_vocab=6")
        f.add_argument("--causal", action="store_true",
                       help="causal programs compiled as decoder-only models (same as --limit causal=true)")
        f.add_argument("--no-shrink", action="store_true", help="do not shrink failing programs")
        f.add_argument(
            "--workers", type=int, help="processes scoring programs (default 1); results do not depend on it"
        )
        _add_ray_option(
            f, "run the programs as Ray tasks (a cluster's ADDRESS, or a local instance); same results"
        )
        f.add_argument("--quiet", action="store_true", help="no progress bar")
        f.set_defaults(func=cmd_fuzz)

    f = targets.add_parser(
        "compiler",
        help="compiled models vs the evaluator",
        description="Differential fuzzing: random programs, compiled, compared with the evaluator on the "
        "numpy, torch and engine backends. Failures are shrunk and saved as regression files.",
    )
    common(f, 10)
    f.add_argument("--backends", help="comma-separated subset of numpy,torch,engine")
    f.add_argument("--save-dir", help="where shrunk failing cases go as JSON (default out/fuzz_failures)")
    f.add_argument("--no-save", action="store_true", help="do not write regression files")

    f = targets.add_parser(
        "tool",
        help="score a circuit-discovery method against the known circuits",
        description="Run a discovery method on random compiled programs and score each answer against "
        "the truth; programs below --pass-bar are flagged and shrunk to the smallest that still fail.",
    )
    common(f, 16)
    f.add_argument(
        "--tool",
        help="(required) acdc, activation_patching, eap, eap_ig, subnetwork_probing, "
        "package.module:function or path/to/file.py:function, called as function(model, dataset)",
    )
    f.add_argument(
        "--truth",
        choices=("structural", "ablation"),
        default="structural",
        help="score against the structural truth or the edges whose ablation changes an output",
    )
    f.add_argument("--ablation", choices=("resample", "mean", "zero"), default="resample",
                   help="the ablation of --truth ablation (default resample)")
    f.add_argument("--level", choices=("node", "edge", "subspace"), default="edge", help="default edge")
    f.add_argument(
        "--metric",
        choices=("auto", "f1", "roc_auc"),
        default="auto",
        help="what decides pass/fail (auto: ROC-AUC for scores, F1 for sets)",
    )
    tool_fuzz.add_scoring_options(f)
    f.add_argument("--tl", action="store_true", help="hand the tool a TransformerLens HookedTransformer")
    f.add_argument("--json", metavar="PATH", help="also write the summary (with shrunk programs) as JSON")

    c = sub.add_parser(
        "demo",
        help="the tour: compile, check, discover, score, report",
        description="Compile a handful of library programs, check each against the evaluator, run "
        "a discovery baseline on one, score it against the truth and write a report "
        "(report.md + report.html with pictures).",
    )
    c.add_argument("--out", default="out/demo", help="report directory (default out/demo)")
    c.add_argument("--programs", help="comma-separated library programs (default: a built-in handful)")
    c.add_argument("--focus", help="the program to run discovery on (default: sort)")
    c.add_argument("--quiet", action="store_true", help="no progress output")
    c.set_defaults(func=cmd_demo)
    return p


def _one_line(e: BaseException) -> str:
    text = " ".join(str(e).split()) or type(e).__name__
    return text if len(text) <= 600 else text[:597] + "..."


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of `rasp-compiler` and `python -m rasp_compiler`; returns the exit status."""
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except BrokenPipeError:  # output piped into `head` and the like
        sys.stderr.close()
        return 0
    except KeyboardInterrupt:
        print(f"{PROG}: interrupted", file=sys.stderr)
        return 130
    except Exception as e:  # noqa: BLE001 - every failure becomes one readable line unless --traceback
        if args.traceback:
            raise
        known = isinstance(e, CLIError) or type(e).__name__ in (
            "ModelFileError",
            "CircuitError",
            "CompileError",
            "UnsupportedProgramError",
            "SuiteError",
            "RASPError",
            "RASPTypeError",
            "RASPEvaluationError",
            "EngineError",
            "ModelError",
            "SourceError",
        )
        prefix = "" if known else f"{type(e).__name__}: "
        print(f"{PROG} {args.command}: error: {prefix}{_one_line(e)}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
