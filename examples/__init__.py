"""Runnable example apps for audit-middleware.

- ``examples.platform``: a miniature workflow platform (Starlette) that reaches every
  event of the seed catalogue through its HTTP API;
- ``examples.fastapi_app``: ``@audited`` on FastAPI path operations with dependencies;
- ``examples.flask_app``: ``@audited`` on Flask views under ``WSGIAuditMiddleware``;
- ``examples.audit_sink``: where the apps above send events when run for real
  (``AUDIT_COLLECTOR_URL`` or ``AUDIT_EVENTS_FILE``);
- ``examples.run``: ``python -m examples.run`` (``make run``) serves the platform and
  drives a little traffic through it (``examples.run_data_dir``: its ``DATA_DIR``).
"""
