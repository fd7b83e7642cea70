"""Events the platform itself initiates: principal ``system``, no client IP.

They carry the organization and workspace of the resource explicitly, because they
also happen outside any request (the run backend's loop) or inside a request of another
place (the root user's ``/admin/jobs/tick``).
"""

from __future__ import annotations

from audit_middleware import SYSTEM, emit

from .store import Store


def emit_system(
    store: Store, event_type: str, target: str, workspace_id: str, *, status: str = ""
) -> None:
    ws = store.workspaces.get_or_none(workspace_id)
    org_id = ws.org_id if ws is not None else ""
    emit(
        event_type,
        target,
        principal=SYSTEM,
        status=status,
        org_id=org_id,
        org_name=store.name_of(org_id) or "",
        workspace_id=workspace_id,
        workspace_name=store.name_of(workspace_id) or "",
    )
