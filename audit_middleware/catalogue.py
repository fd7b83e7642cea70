"""The event catalogue: resource x action -> event type, from the seed document.

Applications extend the default catalogue with :func:`register_resource`; an event type
that is not in it is an :class:`UnknownEventTypeError` at emit (or decoration) time.
"""

from __future__ import annotations

import difflib
import re
import threading
from collections.abc import Mapping
from typing import Final, NoReturn

from .errors import AuditArgumentTypeError, AuditConfigurationError, UnknownEventTypeError

# Seed catalogue as named constants (DESIGN.md, "The catalogue").
ACCESS_TOKEN_CREATED: Final = "access_token_created"
ACCESS_TOKEN_DELETED: Final = "access_token_deleted"
COMPUTE_ENV_CREATED: Final = "compute_env_created"
COMPUTE_ENV_UPDATED: Final = "compute_env_updated"
COMPUTE_ENV_DELETED: Final = "compute_env_deleted"
CREDENTIALS_CREATED: Final = "credentials_created"
CREDENTIALS_UPDATED: Final = "credentials_updated"
CREDENTIALS_DELETED: Final = "credentials_deleted"
CREDENTIALS_ACCESSED: Final = "credentials_accessed"
BUCKET_CREATED: Final = "bucket_created"
BUCKET_UPDATED: Final = "bucket_updated"
BUCKET_DELETED: Final = "bucket_deleted"
BUCKET_HIDDEN: Final = "bucket_hidden"
BUCKET_SHOWN: Final = "bucket_shown"
BUCKET_FILE_DOWNLOADED: Final = "bucket_file_downloaded"
BUCKET_FILE_UPLOADED: Final = "bucket_file_uploaded"
BUCKET_FILE_PREVIEWED: Final = "bucket_file_previewed"
ORGANIZATION_CREATED: Final = "organization_created"
ORGANIZATION_DELETED: Final = "organization_deleted"
PARTICIPANT_ADDED: Final = "participant_added"
PARTICIPANT_ROLE_UPDATED: Final = "participant_role_updated"
PARTICIPANT_DELETED: Final = "participant_deleted"
PIPELINE_CREATED: Final = "pipeline_created"
PIPELINE_DELETED: Final = "pipeline_deleted"
PIPELINE_ACTION_CREATED: Final = "pipeline_action_created"
PIPELINE_ACTION_DELETED: Final = "pipeline_action_deleted"
PIPELINE_SECRET_CREATED: Final = "pipeline_secret_created"
PIPELINE_SECRET_UPDATED: Final = "pipeline_secret_updated"
PIPELINE_SECRET_DELETED: Final = "pipeline_secret_deleted"
RUN_LAUNCHED: Final = "run_launched"
RUN_CREATED: Final = "run_created"
RUN_RELAUNCHED: Final = "run_relaunched"
RUN_RESUMED: Final = "run_resumed"
RUN_STATUS_CHANGED: Final = "run_status_changed"
RUN_COMPLETED: Final = "run_completed"
RUN_DELETED: Final = "run_deleted"
RUN_DROPPED: Final = "run_dropped"
TEAM_CREATED: Final = "team_created"
TEAM_DELETED: Final = "team_deleted"
USER_CREATED: Final = "user_created"
USER_UPDATED: Final = "user_updated"
USER_DELETED: Final = "user_deleted"
USER_SIGN_IN: Final = "user_sign_in"
WORKSPACE_CREATED: Final = "workspace_created"
WORKSPACE_DELETED: Final = "workspace_deleted"

SEED_CATALOGUE: Final[Mapping[str, Mapping[str, str]]] = {
    "access_token": {"add": ACCESS_TOKEN_CREATED, "delete": ACCESS_TOKEN_DELETED},
    "compute_env": {
        "add": COMPUTE_ENV_CREATED, "edit": COMPUTE_ENV_UPDATED, "delete": COMPUTE_ENV_DELETED,
    },
    "credentials": {
        "add": CREDENTIALS_CREATED, "edit": CREDENTIALS_UPDATED,
        "delete": CREDENTIALS_DELETED, "access": CREDENTIALS_ACCESSED,
    },
    "bucket": {
        "add": BUCKET_CREATED, "edit": BUCKET_UPDATED, "delete": BUCKET_DELETED,
        "hide": BUCKET_HIDDEN, "show": BUCKET_SHOWN,
    },
    "bucket_file": {
        "download": BUCKET_FILE_DOWNLOADED, "upload": BUCKET_FILE_UPLOADED,
        "preview": BUCKET_FILE_PREVIEWED,
    },
    "organization": {"add": ORGANIZATION_CREATED, "delete": ORGANIZATION_DELETED},
    "participant": {
        "add": PARTICIPANT_ADDED, "update_role": PARTICIPANT_ROLE_UPDATED,
        "delete": PARTICIPANT_DELETED,
    },
    "pipeline": {"add": PIPELINE_CREATED, "delete": PIPELINE_DELETED},
    "pipeline_action": {"add": PIPELINE_ACTION_CREATED, "delete": PIPELINE_ACTION_DELETED},
    "pipeline_secret": {
        "add": PIPELINE_SECRET_CREATED, "edit": PIPELINE_SECRET_UPDATED,
        "delete": PIPELINE_SECRET_DELETED,
    },
    "run": {
        "launch": RUN_LAUNCHED, "create": RUN_CREATED, "relaunch": RUN_RELAUNCHED,
        "resume": RUN_RESUMED, "status_change": RUN_STATUS_CHANGED,
        "complete": RUN_COMPLETED, "delete": RUN_DELETED, "drop": RUN_DROPPED,
    },
    "team": {"add": TEAM_CREATED, "delete": TEAM_DELETED},
    "user": {"add": USER_CREATED, "edit": USER_UPDATED, "delete": USER_DELETED},
    "user_session": {"login": USER_SIGN_IN},
    "workspace": {"add": WORKSPACE_CREATED, "delete": WORKSPACE_DELETED},
}

#: What a well-formed event type (or resource/action name) looks like. The collector
#: accepts app-defined types that match it.
NAME_PATTERN: Final = re.compile(r"[a-z][a-z0-9_]{0,63}")


def _check_name(kind: str, name: str) -> None:
    if not isinstance(name, str):
        raise AuditArgumentTypeError(
            f"{kind} {name!r} is not a name: pass a str of 1-64 characters of a-z, 0-9 "
            f"and '_', starting with a letter (e.g. 'report_exported')")
    if not NAME_PATTERN.fullmatch(name):
        raise AuditConfigurationError(
            f"{kind} {name!r} is not valid: use 1-64 characters of a-z, 0-9 and '_', "
            f"starting with a letter (e.g. 'report_exported')"
        )


class Catalogue:
    """A registry of resources, their actions and the event type of each."""

    def __init__(self, resources: Mapping[str, Mapping[str, str]] = SEED_CATALOGUE) -> None:
        self._lock = threading.Lock()
        self._resources: dict[str, dict[str, str]] = {}
        #: Every registered type; read without a lock on the emit path.
        self.types: frozenset[str] = frozenset()
        if not isinstance(resources, Mapping):  # else .items(): an AttributeError
            raise AuditArgumentTypeError(
                f"Catalogue() takes a mapping of each resource to its actions, e.g. "
                f"{{'report': {{'export': 'report_exported'}}}}; got {resources!r:.80}")
        for resource, actions in resources.items():
            self.register_resource(resource, actions)

    def resources(self) -> dict[str, dict[str, str]]:
        return {r: dict(a) for r, a in self._resources.items()}

    def event_type(self, resource: str, action: str) -> str:
        try:
            return self._resources[resource][action]
        except KeyError:
            if isinstance(resource, str) and isinstance(action, str):
                raise UnknownEventTypeError(
                    f"{resource}.{action}", self.suggest(f"{resource}_{action}")
                ) from None
            # A number (hashable) was "unknown audit event type '5.export'".
            self._not_names(resource, action)
        except TypeError:  # unhashable: "unhashable type: 'list'" said nothing of ours
            self._not_names(resource, action)

    @staticmethod
    def _not_names(resource: object, action: object) -> NoReturn:
        raise AuditArgumentTypeError(
            f"event_type(resource, action) takes two names (str), e.g. "
            f"event_type('run', 'launch'); got {resource!r:.80}, {action!r:.80}") from None

    def register_resource(self, resource: str, actions: Mapping[str, str]) -> None:
        """Add (or extend) a resource: ``actions`` maps each action to its event type."""
        _check_name("resource", resource)
        if not isinstance(actions, Mapping):  # a list of names: .items() AttributeError
            raise AuditArgumentTypeError(
                f"resource {resource!r}: actions must map each action to its event type, "
                f"e.g. {{'export': '{resource}_exported'}}; got {actions!r}")
        if not actions:
            raise AuditConfigurationError(f"resource {resource!r} needs at least one action")
        for action, event_type in actions.items():
            _check_name("action", action)
            _check_name("event type", event_type)
        with self._lock:
            for action, event_type in actions.items():
                current = self._resources.get(resource, {}).get(action)
                if current is not None and current != event_type:
                    raise AuditConfigurationError(
                        f"{resource}.{action} is already registered as {current!r}; "
                        f"pick another action name instead of redefining it"
                    )
            self._resources.setdefault(resource, {}).update(actions)
            # Readers use the frozenset without a lock: publish a new one atomically.
            self.types = self.types | frozenset(actions.values())

    def check(self, event_type: str) -> str:
        """Return ``event_type`` if registered, else raise with the closest valid types."""
        if type(event_type) is str:  # (a list is unhashable: no lookup before this)
            if event_type in self.types:
                return event_type
            raise UnknownEventTypeError(event_type, self.suggest(event_type))
        if isinstance(event_type, str):  # a str subclass, as an enum.StrEnum member
            return self.check(str.__str__(event_type))
        if callable(event_type):  # ``@audited`` written without its event type
            raise AuditArgumentTypeError(
                f"the event type is missing: write @audited('event_type', ...) above "
                f"{getattr(event_type, '__qualname__', event_type)!s}, not a bare @audited")
        raise AuditArgumentTypeError(
            f"an event type is a str such as 'run_launched' (or a catalogue constant, "
            f"e.g. audit_middleware.catalogue.RUN_LAUNCHED), got {event_type!r}")

    def suggest(self, event_type: str) -> list[str]:
        return difflib.get_close_matches(event_type, sorted(self.types), n=3, cutoff=0.6)


default_catalogue = Catalogue()


def register_resource(resource: str, actions: Mapping[str, str]) -> None:
    """Register an application's own resource and its actions in the default catalogue,
    e.g. ``register_resource("report", {"export": "report_exported"})``."""
    default_catalogue.register_resource(resource, actions)
