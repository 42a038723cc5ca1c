"""The outer shell: the command line, live progress bars, the dev server, the demo source."""
