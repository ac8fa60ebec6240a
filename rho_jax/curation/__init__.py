"""Curation of training data as datatrove pipeline steps: decontamination against the evaluation sets and
phi-1's quality classifier (see docs/curation.md).

Importing the package imports `rho_jax.executors`, which makes datatrove's local executor start its processes
from a fork server (JAX's threads make forking unsafe), also for pipelines built here and run directly.
"""

import rho_jax.executors  # noqa: F401  (sets multiprocess's start method)
