"""Transforms layer: compiled models rewritten into harder ground truth (rotated bases, distractor
heads and neurons, cancelling pairs, compressed residual streams), with the annotation carried along."""
