"""`python -m rho_jax.bench`: see `rho_jax.bench.cli`."""

import sys

from rho_jax.bench.cli import main

sys.exit(main())
