"""stream layer of pyxenstored (see DESIGN.md)."""
