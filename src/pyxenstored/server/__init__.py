"""server layer of pyxenstored (see DESIGN.md)."""
