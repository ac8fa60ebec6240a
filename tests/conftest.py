"""Test setup: 8 simulated CPU devices, absl flags parsed (grain workers), tiny HF models built once."""

from __future__ import annotations

import os

os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import jax  # noqa: E402
import pytest  # noqa: E402

jax.config.update("jax_num_cpu_devices", 8)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """A multi-process test is always slow too, so `-m "not slow"` never starts a cluster."""
    for item in items:
        if item.get_closest_marker("multiprocess") and not item.get_closest_marker("slow"):
            item.add_marker(pytest.mark.slow)


def pytest_configure(config: pytest.Config) -> None:
    import absl.flags

    absl.flags.FLAGS.mark_as_parsed()
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    hf_logging.set_verbosity_error()


@pytest.fixture(scope="session")
def tiny_hf_dir(tmp_path_factory: pytest.TempPathFactory):
    """`tiny_hf_dir(variant)` -> path of a tiny random HF model of that variant (built once per session)."""
    from rho_jax.models.parity import build_tiny_hf_model

    built = {}

    def get(variant: str):
        if variant not in built:
            built[variant] = build_tiny_hf_model(tmp_path_factory.mktemp(variant), variant)
        return built[variant]

    return get
