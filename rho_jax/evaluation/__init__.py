"""Measuring a model: held-out loss (`heldout.py`, used during training)."""
