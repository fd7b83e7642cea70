from __future__ import annotations

from django.urls import path

from . import views

urlpatterns = [
    path("sign-in", views.sign_in),
    path("workspaces/<str:workspace_id>/pipelines", views.add_pipeline),
    path("workspaces/<str:workspace_id>/pipelines/<str:pipeline_id>", views.delete_pipeline),
]
