"""Backends: one file each, found through the registry in `base`."""

from vitedge.backends.base import Backend, Runner, all_backends, get_backend

__all__ = ["Backend", "Runner", "all_backends", "get_backend"]
