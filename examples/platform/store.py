"""In-memory data of the example platform: one ``Store`` per app, so each test's app
starts empty. Ids are random (``run_3f9a…``) so a test can only pass by reading them
from responses, never by guessing."""

from __future__ import annotations

import secrets
from dataclasses import dataclass, field
from typing import Generic, Protocol, TypeVar


class NotFound(LookupError):
    """A resource id that does not exist (or not where the request looked for it)."""

    def __init__(self, kind: str, ident: str) -> None:
        self.kind = kind
        self.ident = ident
        super().__init__(
            f"no {kind} {ident!r} here: check the id (ids are returned when a resource "
            f"is created) and that it belongs to this organization/workspace"
        )


def new_id(prefix: str) -> str:
    return f"{prefix}_{secrets.token_hex(5)}"


@dataclass
class User:
    id: str
    name: str
    email: str
    password_hash: str
    is_root: bool = False


@dataclass
class AccessToken:
    id: str
    user_id: str
    name: str
    token_hash: str
    #: Sign-in sessions are tokens too, but are not "access tokens" of the catalogue.
    session: bool = False


@dataclass
class Org:
    id: str
    name: str


@dataclass
class Workspace:
    id: str
    org_id: str
    name: str


@dataclass
class Team:
    id: str
    org_id: str
    name: str


@dataclass
class Participant:
    id: str
    workspace_id: str
    user_id: str
    role: str


@dataclass
class Credentials:
    id: str
    workspace_id: str
    name: str
    provider: str
    keys: dict[str, str]


@dataclass
class ComputeEnv:
    id: str
    workspace_id: str
    name: str
    platform: str
    credentials_id: str
    work_dir: str


@dataclass
class Pipeline:
    id: str
    workspace_id: str
    name: str
    repository: str
    compute_env_id: str


@dataclass
class PipelineAction:
    id: str
    workspace_id: str
    name: str
    pipeline_id: str
    source: str


@dataclass
class PipelineSecret:
    id: str
    workspace_id: str
    name: str
    value: str


@dataclass
class Run:
    id: str
    workspace_id: str
    #: The id of the first launch of this lineage; relaunches and resumes share it.
    launch_id: str
    repository: str
    compute_env_id: str | None
    status: str = "submitted"
    #: How the simulated workflow ends when the backend completes it.
    outcome: str = "succeeded"
    marked_for_deletion: bool = False
    #: The run this one relaunched or resumed (None for an initial launch).
    relaunched_from: str | None = None

    def event_status(self, status: str = "") -> str:
        """The ``status`` of an audit event about this run (whose target is always its
        ``launch_id``): see :func:`run_event_status`."""
        return run_event_status(self.id, self.launch_id, status)


def run_event_status(run_id: str, launch_id: str, status: str = "") -> str:
    """Every event of a run targets the lineage's initial launch (the seed's rule), so a
    relaunched or resumed run names itself after the status: ``"<status>; run <id>"``, or
    ``"run <id>"`` with no status. The initial launch's status is left as it is. Both
    parts are the platform's own (a run status of its closed set, a generated id), never
    a caller's text, so nothing can forge the run a record names."""
    if run_id == launch_id:
        return status
    return f"{status}; run {run_id}" if status else f"run {run_id}"


@dataclass
class Bucket:
    id: str
    workspace_id: str
    name: str
    uri: str
    #: None for a public bucket; a private one is read with these credentials.
    credentials_id: str | None
    hidden: bool = False
    files: dict[str, bytes] = field(default_factory=dict)


class _HasId(Protocol):
    id: str


T = TypeVar("T", bound=_HasId)


class Table(Generic[T]):
    """Rows of one kind by id. ``get(ident, workspace_id=...)`` also checks ownership, so
    a resource of another workspace is "not found", never silently used."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._rows: dict[str, T] = {}

    def add(self, row: T) -> T:
        self._rows[row.id] = row
        return row

    def get(self, ident: str, **owner: str) -> T:
        row = self._rows.get(ident)
        if row is None or any(getattr(row, k) != v for k, v in owner.items()):
            raise NotFound(self.kind, ident)
        return row

    def get_or_none(self, ident: str) -> T | None:
        return self._rows.get(ident)

    def remove(self, ident: str, **owner: str) -> T:
        row = self.get(ident, **owner)
        del self._rows[ident]
        return row

    def values(self) -> list[T]:
        return list(self._rows.values())

    def __len__(self) -> int:
        return len(self._rows)


class Store:
    def __init__(self) -> None:
        self.users: Table[User] = Table("user")
        self.tokens: Table[AccessToken] = Table("access token")
        self.orgs: Table[Org] = Table("organization")
        self.workspaces: Table[Workspace] = Table("workspace")
        self.teams: Table[Team] = Table("team")
        self.participants: Table[Participant] = Table("participant")
        self.credentials: Table[Credentials] = Table("credentials")
        self.compute_envs: Table[ComputeEnv] = Table("compute environment")
        self.pipelines: Table[Pipeline] = Table("pipeline")
        self.actions: Table[PipelineAction] = Table("pipeline action")
        self.secrets: Table[PipelineSecret] = Table("pipeline secret")
        self.runs: Table[Run] = Table("run")
        self.buckets: Table[Bucket] = Table("bucket")
        # Organization and workspace names outlive their resources: the audit context
        # resolves names when the event is emitted, which for a delete is after it.
        self._names: dict[str, str] = {}

    def add_org(self, name: str) -> Org:
        org = self.orgs.add(Org(new_id("org"), name))
        self._names[org.id] = name
        return org

    def add_workspace(self, org_id: str, name: str) -> Workspace:
        self.orgs.get(org_id)
        ws = self.workspaces.add(Workspace(new_id("ws"), org_id, name))
        self._names[ws.id] = name
        return ws

    def remove_org(self, org_id: str) -> Org:
        org = self.orgs.remove(org_id)
        for ws in self.workspaces.values():
            if ws.org_id == org_id:
                self.workspaces.remove(ws.id)
        for team in self.teams.values():
            if team.org_id == org_id:
                self.teams.remove(team.id)
        return org

    def workspace(self, org_id: str, workspace_id: str) -> Workspace:
        self.orgs.get(org_id)
        return self.workspaces.get(workspace_id, org_id=org_id)

    def name_of(self, ident: str) -> str | None:
        """The name of an organization or workspace, also after it was deleted."""
        return self._names.get(ident)
