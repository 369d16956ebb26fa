"""The ModelServer controller: ``plan.py`` and ``build.py`` (pure: what a server needs, its pod
and Service, its status), ``runtime.py`` (the runtime's HTTP API: which adapters it serves, load
and unload) and ``runner.py`` (the thin shell the job controller's cycle drives)."""
