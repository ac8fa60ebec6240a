"""Cross-process agreement on host-side flags (a stop signal, a failed save) without stalling the devices.

`LateAgreement.exchange(flags)` starts the collective "is this flag set on any process" for this
step's flags and returns the answer for the flags of the previous call: the collective is queued on
the devices behind the step that was running when it was started, so reading it a step later waits
for that step only, never for the one just dispatched. Every process calls `exchange` at the same
points of the loop, so all of them read the same answer after the same step. A single process needs
no collective: it gets its own flags back at once.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec


class LateAgreement:
    """OR of `count` boolean flags over all processes, answered one `exchange` late (see the module)."""

    def __init__(self, count: int):
        if count < 1:
            raise ValueError(f"an agreement needs at least one flag, got count={count}.")
        self.count = count
        self.collective = jax.process_count() > 1
        self._pending: jax.Array | None = None
        if self.collective:
            mesh = Mesh(np.asarray(jax.devices()), ("processes",))
            self._rows = NamedSharding(mesh, PartitionSpec("processes"))
            self._any = jax.jit(lambda flags: jnp.max(flags, axis=0), out_shardings=NamedSharding(mesh, PartitionSpec()))

    def exchange(self, *flags: bool) -> tuple[bool, ...]:
        """Start agreeing on `flags`; return, per flag, whether any process set it in the previous
        call (all False on the first call). On one process: `flags` themselves, at once."""
        if len(flags) != self.count:
            raise ValueError(f"this agreement takes {self.count} flags, got {len(flags)}.")
        if not self.collective:
            return tuple(bool(f) for f in flags)
        local = np.tile(np.asarray(flags, np.int32), (jax.local_device_count(), 1))
        started = self._any(jax.make_array_from_process_local_data(self._rows, local))
        previous, self._pending = self._pending, started
        if previous is None:
            return (False,) * self.count
        return tuple(bool(x) for x in np.asarray(previous.addressable_data(0)))
