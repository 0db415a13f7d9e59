"""The runs users start from the command line (on top of every other layer)."""
