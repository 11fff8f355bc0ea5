"""The `jobq` command line, and the text helpers it shares with the `jobq-tui` console.

It needs typer and rich, never textual: `pip install jobq` brings it, for workers, cron jobs
and scripts. The console (`jobq_tui`, the `[tui]` extra) builds on these helpers."""
