"""DLM: a Data Lifecycle Manager for observatory data products."""

__version__ = "0.1.0"
