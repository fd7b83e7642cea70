"""A small Django project audited by ``WSGIAuditMiddleware`` and ``@audited`` views.

    AUDIT_COLLECTOR_URL=unix://$PWD/audit-data/collector.sock \\
    DJANGO_SETTINGS_MODULE=examples.django_app.settings \\
        python -m django runserver --noreload        # or any WSGI server:
    gunicorn examples.django_app.wsgi:application

(``AUDIT_COLLECTOR_URL``: the collector ``make run`` starts, or ``audit-collector
serve``'s; or ``AUDIT_EVENTS_FILE=events.jsonl``: see ``examples/audit_sink.py``.)

Django authenticates (``auth.BearerTokenMiddleware`` here; ``django.contrib.auth`` in a
real project) and a tiny Django middleware, ``auth.AuditPrincipalMiddleware``, tells
the audit layer who acted with ``audit_middleware.set_principal``. The WSGI application
in ``wsgi.py`` is Django's, wrapped in ``WSGIAuditMiddleware``.
"""
