"""Kernel implementations, keyed by the names of the catalogue in ``shared.kernels``.

One module per kernel (``saxpy``, ``matmul``, ``stencil2d``, ``nbody``, ``histogram``,
``montecarlo``), each with a ``*_cuda`` sibling; ``base`` holds what they share and
``registry`` lists them (one line per kernel) and finds third-party ones. These modules
import numba: only the worker's pool processes (``services.worker.child``) import them.
"""
