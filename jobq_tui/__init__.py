"""The `jobq-tui` operations console (Textual), installed with the `[tui]` extra."""
