"""The package version, in a leaf so that any module can read it without importing the
package root (whose `__init__` re-exports the public API). pyproject.toml reads it from here."""

__version__ = "0.1.0"
