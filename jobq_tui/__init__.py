"""jobq's operator tools: the `jobq` CLI and the `jobq-tui` console."""
