"""The package's version, in one place (``autoprune.__version__`` reads it; so do the modules
that record it, without importing the lazy package root)."""

__version__ = "0.1.0"
