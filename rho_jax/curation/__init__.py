"""Curation of training data as datatrove pipeline steps: decontamination against the evaluation sets and
phi-1's quality classifier (see docs/curation.md).

datatrove's local executor starts its helper processes (a Manager, a worker pool) with the `multiprocess`
package. Forking a process whose JAX runtime has started its threads can deadlock, so on import this
package makes `multiprocess` start processes from a fork server (a clean process) instead.
"""

import multiprocess

multiprocess.set_start_method("forkserver", force=True)
