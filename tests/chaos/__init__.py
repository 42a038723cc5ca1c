"""The chaos suite: concurrency and faults against real processes (issue 7)."""
