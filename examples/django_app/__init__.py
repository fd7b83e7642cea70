"""A small Django project audited by ``WSGIAuditMiddleware`` and ``@audited`` views.

    DJANGO_SETTINGS_MODULE=examples.django_app.settings \\
        python -m django runserver --noreload        # or any WSGI server:
    gunicorn examples.django_app.wsgi:application

Django authenticates (``auth.BearerTokenMiddleware`` here; ``django.contrib.auth`` in a
real project) and a tiny Django middleware, ``auth.AuditPrincipalMiddleware``, tells
the audit layer who acted with ``audit_middleware.set_principal``. The WSGI application
in ``wsgi.py`` is Django's, wrapped in ``WSGIAuditMiddleware``.
"""
