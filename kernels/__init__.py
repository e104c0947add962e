"""Triton kernels shipped with dataeff (installed as `dataeff._kernels`)."""
