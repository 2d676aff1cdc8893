"""Numba kernels for back-end yield analytics: numpy arrays in, numpy arrays out.

This package depends on numpy and numba only (a test enforces it). Each algorithm lives in its own
module with a private ``@njit`` function and a public, validating wrapper; see README.md for the
contract and how to add a kernel.
"""

__version__ = "0.1.0"
