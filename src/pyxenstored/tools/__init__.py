"""Tools for the project's own files: man pages and shell completion from the argparse definitions."""
