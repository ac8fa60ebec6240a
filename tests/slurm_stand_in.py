"""Stand-ins for Slurm's sbatch, srun and scontrol, so the tests of datatrove's Slurm executor run its
real submissions on this machine: `sbatch` records its arguments in `<dir>/sbatch_calls`, keeps the
n-th submitted script as `<dir>/job_<n>.sh` and answers with job id 41 + n; `srun` drops its options
and runs the command; `scontrol` names localhost."""

from __future__ import annotations

import os
import sys
from pathlib import Path

SBATCH = r"""#!/usr/bin/env bash
echo "$*" >> "$SLURM_STAND_IN/sbatch_calls"
count=$(wc -l < "$SLURM_STAND_IN/sbatch_calls")
cp "${@: -1}" "$SLURM_STAND_IN/job_$count.sh"
echo "Submitted batch job $((41 + count))"
"""
SRUN = r"""#!/usr/bin/env bash
while [[ $1 == -* ]]; do [[ $1 == -n ]] && shift; shift; done
exec "$@"
"""
SCONTROL = "#!/usr/bin/env bash\necho localhost\n"


def slurm_stand_in(directory: Path, **env: str) -> dict[str, str]:
    """Write the stand-ins into `directory`; the environment that puts them first on PATH (plus `env`)."""
    directory.mkdir(parents=True, exist_ok=True)
    for name, body in (("sbatch", SBATCH), ("srun", SRUN), ("scontrol", SCONTROL)):
        (directory / name).write_text(body)
        (directory / name).chmod(0o755)
    return {**os.environ, "PATH": f"{directory}:{Path(sys.executable).parent}:{os.environ['PATH']}",
            "SLURM_STAND_IN": str(directory), **env}
