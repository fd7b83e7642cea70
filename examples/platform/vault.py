"""Where the application reads credentials for its own use (launching a run, opening a
private bucket). Every read is recorded: ``credentials_accessed`` by ``system``."""

from __future__ import annotations

from audit_middleware.catalogue import CREDENTIALS_ACCESSED

from .store import Store
from .system import emit_system


class Vault:
    def __init__(self, store: Store) -> None:
        self.store = store

    def read(self, workspace_id: str, credentials_id: str) -> dict[str, str]:
        creds = self.store.credentials.get(credentials_id, workspace_id=workspace_id)
        emit_system(self.store, CREDENTIALS_ACCESSED, creds.id, workspace_id)
        return dict(creds.keys)
