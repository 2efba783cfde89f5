"""cli layer of pyxenstored (see docs/architecture.md)."""
