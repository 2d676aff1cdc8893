"""Adapters from polars frames to backend_fab_kernels (numpy + offsets) and back to tables."""
