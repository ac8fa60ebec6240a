"""rho_jax: Selective Language Modeling (Rho-1) for Llama/Mistral models in JAX/Flax."""

__version__ = "0.1.0"
