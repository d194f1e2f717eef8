"""montecarlo_pi, CUDA, under the numba CUDA simulator (in a subprocess: the simulator must be
enabled before numba is imported)."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys

SCRIPT = """
import json, sys
from services.worker.kernels import implementation
out = [implementation("montecarlo_pi", "cuda")({"samples": n, "seed": 5}, {}, {})
       for n in (1, 127, 1000)]
out.append(implementation("montecarlo_pi", "cuda")({"samples": 1000, "seed": 5}, {}, {}))
print(json.dumps(out))
"""


def test_cuda_montecarlo_in_the_simulator() -> None:
    env = {**os.environ, "NUMBA_ENABLE_CUDASIM": "1"}
    proc = subprocess.run(
        [sys.executable, "-c", SCRIPT],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        check=True,
    )
    r1, r127, r1000, again = json.loads(proc.stdout.strip().splitlines()[-1])
    assert r1["samples"] == 1
    assert r1["estimate"] in (0.0, 4.0)
    assert r127["samples"] == 127
    se = 4 * math.sqrt((math.pi / 4) * (1 - math.pi / 4) / 1000)
    assert abs(r1000["estimate"] - math.pi) < 4 * se
    assert again == r1000  # same seed, same streams, same estimate
