"""cli layer of pyxenstored (see DESIGN.md)."""
