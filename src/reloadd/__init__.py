"""reloadd: watch the files of long-running servers and reload them."""

__version__ = "0.1.0"
