"""Placeholder until the Triton kernels land (issue 3): reports the backend unavailable."""

IMPORT_ERROR = "the Triton kernels are not implemented yet"
