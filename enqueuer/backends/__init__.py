"""Where jobs run: on Temporal, or in the calling process when jobs are disabled."""
