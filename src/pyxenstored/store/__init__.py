"""store layer of pyxenstored (see DESIGN.md)."""
