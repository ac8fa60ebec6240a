"""`python -m rho_jax.bench`: see `rho_jax.bench.step_bench`."""

import sys

from rho_jax.bench.step_bench import main

sys.exit(main())
