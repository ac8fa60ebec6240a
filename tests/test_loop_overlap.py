"""The training loop overlaps the host with the devices: with a batch that takes `data` seconds to
prepare and a step that takes `step` seconds to compute, a step of the loop takes about
max(data, step), not data + step (the host reads and transfers batch N+1 while step N runs); and the
cross-process stop agreement answers one step late instead of waiting for the running step."""

from __future__ import annotations

import statistics
import time

import jax
import jax.numpy as jnp
import pytest
from train_runs import run_config

from rho_jax.train import Trainer
from rho_jax.training import trainer as trainer_module
from rho_jax.training.agreement import LateAgreement
from rho_jax.training.config import load_config

STEPS = 8


def _burden(seed: jax.Array) -> jax.Array:
    """0.0, after a chain of matmuls that depends on `seed` (a slow step's extra device work)."""
    x = jnp.full((256, 256), 1e-2) + 0.0 * seed
    for _ in range(24):
        x = jnp.tanh(x @ x)
    return 0.0 * x.sum()


def _slowed(step_fn):
    """`step_fn` followed by `_burden` in one program: the next step can only start when both are done."""

    def step(state, batch, ref_params):
        state, metrics = step_fn(state, batch, ref_params)
        return state, {**metrics, "loss_all": metrics["loss_all"] + _burden(metrics["loss_all"])}

    return jax.jit(step)


def _median_seconds(run, repeats: int = 3) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        jax.block_until_ready(run())
        times.append(time.perf_counter() - start)
    return statistics.median(times)


@pytest.mark.slow
def test_a_step_of_the_loop_takes_the_longer_of_data_and_compute_not_their_sum(tmp_path, monkeypatch):
    config = run_config(tmp_path, "run", train={"batch_size": 8, "total_steps": STEPS}, eval={"sets": {}},
                        checkpoint={"every_tokens": 10**9})
    trainer = Trainer.setup(load_config(config))
    slowed = _slowed(trainer.step_fn)  # does not donate: timing it leaves the trainer's state in place
    probe = trainer_module.to_global_batch(next(trainer.data_iterator), trainer_module.batch_sharding(trainer.mesh))

    def one_step():
        return slowed(trainer.state, probe, trainer.ref_params)

    jax.block_until_ready(one_step())  # compiled before it is timed
    data_seconds = max(0.2, _median_seconds(one_step))  # data as slow as the step: the sum is twice the longer one

    def serial_step():  # what a loop without overlap does per step
        time.sleep(data_seconds)
        return one_step()

    dispatched: list[float] = []

    def timed_step(state, batch, ref_params):
        dispatched.append(time.perf_counter())
        return slowed(state, batch, ref_params)

    real_to_global_batch = trainer_module.to_global_batch

    def slow_to_global_batch(local, sharding):
        time.sleep(data_seconds)
        return real_to_global_batch(local, sharding)

    monkeypatch.setattr(trainer_module, "to_global_batch", slow_to_global_batch)
    trainer.step_fn = timed_step
    assert trainer.run() == 0 and trainer.step == STEPS
    assert len(dispatched) == STEPS
    loop_step = statistics.median(b - a for a, b in zip(dispatched[2:], dispatched[3:]))  # steady state
    serial = _median_seconds(serial_step)
    assert loop_step >= data_seconds  # the data really was this slow
    assert loop_step < 0.8 * serial, (
        f"a loop step took {loop_step:.3f} s with data {data_seconds:.3f} s: no overlap (data then step, one after "
        f"the other, took {serial:.3f} s)")


def test_one_process_agrees_at_once_and_a_wrong_flag_count_is_refused():
    agreement = LateAgreement(2)
    assert agreement.exchange(True, False) == (True, False)
    assert agreement.exchange(False, False) == (False, False)
    with pytest.raises(ValueError, match="takes 2 flags, got 1"):
        agreement.exchange(True)
    with pytest.raises(ValueError, match="at least one flag"):
        LateAgreement(0)


def test_the_collective_agreement_answers_one_exchange_late(monkeypatch):
    """The multi-process path on this process's devices: each answer is the previous call's flags."""
    monkeypatch.setattr(jax, "process_count", lambda: 2)
    agreement = LateAgreement(2)
    monkeypatch.undo()
    assert agreement.collective
    flags = [(False, True), (True, False), (True, True), (False, False)]
    answers = [agreement.exchange(*f) for f in flags]
    assert answers == [(False, False)] + flags[:-1]
