"""python -m rho_jax.quickstart: see `rho_jax.quickstart` for what it does."""

import sys

from rho_jax.quickstart.cli import main

if __name__ == "__main__":
    sys.exit(main())
