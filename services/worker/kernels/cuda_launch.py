"""Launch geometry shared by the CUDA kernels (imported only where CUDA is usable).

Grid-stride kernels get enough blocks to fill the device (``SMS_x_BLOCKS``); under the
simulator (``NUMBA_ENABLE_CUDASIM=1``: about 3,300 simulated threads a second) they get one
block, and the stride loop covers the rest.
"""

from __future__ import annotations

import math

import numba
from numba import cuda

SIMULATED = bool(numba.config.ENABLE_CUDASIM)
BLOCKS_PER_SM = 8


def stride_blocks(n: int, threads_per_block: int) -> int:
    """Blocks for a grid-stride loop over ``n`` items."""
    if SIMULATED:
        return 1
    sms = int(cuda.current_context().device.MULTIPROCESSOR_COUNT)
    return max(1, min(sms * BLOCKS_PER_SM, math.ceil(n / threads_per_block)))


def tiles(n: int, tile: int) -> int:
    return max(1, math.ceil(n / tile))
