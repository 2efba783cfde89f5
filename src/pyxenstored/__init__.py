"""pyxenstored: a Xenstore daemon and migration-stream toolkit."""

__version__ = "0.1.0"
