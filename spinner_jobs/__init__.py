"""spinner-jobs internals, in layers; each imports only those below it.

- ``spinner_jobs.core``: wire names, models, errors, the job-type protocol (imports
  nothing of ours);
- ``spinner_jobs.store`` and ``spinner_jobs.connectors``: the snapshot store and the
  sources;
- ``activities`` and ``workflows`` (top-level, as the design card fixes them);
- ``spinner_jobs.jobs``: the job types, declared once and registered;
- ``enqueuer`` (top-level): the public API, ``Enqueuer`` and ``Settings``;
- ``spinner_jobs.worker``: the worker process, wiring activities to real clients;
- ``spinner_jobs.shell``: the command line, the demo and the dev server.
"""
