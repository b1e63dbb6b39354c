"""Shared test settings: hypothesis runs derandomized (fixed seeds) unless HYPOTHESIS_PROFILE says so."""

import os

os.environ.setdefault("OMP_NUM_THREADS", "1")

from hypothesis import HealthCheck, settings  # noqa: E402

settings.register_profile(
    "ci", derandomize=True, deadline=None, print_blob=True, suppress_health_check=[HealthCheck.too_slow]
)
settings.register_profile("fuzz", derandomize=False, deadline=None, max_examples=2000)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))

import torch  # noqa: E402 - a hard dependency

torch.set_num_threads(1)  # tiny models on a shared 2-core machine run faster on one thread
