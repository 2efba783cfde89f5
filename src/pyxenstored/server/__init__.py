"""server layer of pyxenstored (see docs/architecture.md)."""
