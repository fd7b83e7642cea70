"""The seed catalogue, app-defined resources, and unknown types."""

from __future__ import annotations

import pytest

from audit_middleware import (
    AuditConfigurationError,
    Catalogue,
    UnknownEventTypeError,
    audited,
    configure,
    emit,
    register_resource,
)
from audit_middleware import catalogue as cat
from audit_middleware.event import AuditEvent
from tests.doc_tables import table_rows

SEED_TYPES = {
    "access_token_created", "access_token_deleted", "compute_env_created",
    "compute_env_updated", "compute_env_deleted", "credentials_created",
    "credentials_updated", "credentials_deleted", "credentials_accessed", "bucket_created",
    "bucket_updated", "bucket_deleted", "bucket_hidden", "bucket_shown",
    "bucket_file_downloaded", "bucket_file_uploaded", "bucket_file_previewed",
    "organization_created", "organization_deleted", "participant_added",
    "participant_role_updated", "participant_deleted", "pipeline_created", "pipeline_deleted",
    "pipeline_action_created", "pipeline_action_deleted", "pipeline_secret_created",
    "pipeline_secret_updated", "pipeline_secret_deleted", "run_launched", "run_created",
    "run_relaunched", "run_resumed", "run_status_changed", "run_completed", "run_deleted",
    "run_dropped", "team_created", "team_deleted", "user_created", "user_updated",
    "user_deleted", "user_sign_in", "workspace_created", "workspace_deleted",
}


def test_seed_catalogue_is_complete() -> None:
    assert Catalogue().types == SEED_TYPES
    assert len(cat.SEED_CATALOGUE) == 15
    assert cat.SEED_CATALOGUE["run"]["relaunch"] == cat.RUN_RELAUNCHED == "run_relaunched"
    assert cat.SEED_CATALOGUE["user_session"]["login"] == cat.USER_SIGN_IN


def test_resource_action_lookup() -> None:
    assert Catalogue().event_type("bucket", "hide") == "bucket_hidden"
    with pytest.raises(UnknownEventTypeError, match="bucket.hid"):
        Catalogue().event_type("bucket", "hid")


def test_unknown_type_names_the_closest_valid_types(events: list[AuditEvent]) -> None:
    with pytest.raises(UnknownEventTypeError) as raised:
        emit("credential_created", "c1")
    assert "credentials_created" in raised.value.suggestions
    assert "did you mean 'credentials_created'" in str(raised.value)
    assert "register_resource" in str(raised.value)
    assert events == []


def test_unknown_type_fails_at_decoration_time() -> None:
    with pytest.raises(UnknownEventTypeError):
        audited("pipline_created")


def test_app_registers_its_own_resource(events: list[AuditEvent]) -> None:
    catalogue = Catalogue()
    catalogue.register_resource("report", {"export": "report_exported"})
    configure(catalogue=catalogue)
    assert emit("report_exported", "r1").type == "report_exported"
    assert catalogue.event_type("report", "export") == "report_exported"


def test_register_resource_in_default_catalogue() -> None:
    register_resource("dashboard", {"share": "dashboard_shared"})
    assert "dashboard_shared" in cat.default_catalogue.types
    register_resource("dashboard", {"share": "dashboard_shared"})  # idempotent


@pytest.mark.parametrize(("resource", "actions"), [
    ("Report", {"export": "report_exported"}),
    ("report", {"export": "report exported"}),
    ("report", {"": "report_exported"}),
    ("report", {}),
    ("r" * 65, {"export": "report_exported"}),
    ("report", ["report_exported"]),  # was an AttributeError ('list' has no .items)
])
def test_malformed_registrations_are_refused(resource: str, actions: dict[str, str]) -> None:
    with pytest.raises(AuditConfigurationError):
        Catalogue().register_resource(resource, actions)


def test_redefining_an_action_is_refused() -> None:
    with pytest.raises(AuditConfigurationError, match="already registered"):
        Catalogue().register_resource("run", {"launch": "run_started"})


def _documented_pairs(cell: str) -> dict[str, str]:
    """``add → `x_created`, update role → `y`` -> {"add": "x_created", "update_role": "y"}."""
    pairs = (item.split("→") for item in cell.split(","))
    return {action.strip().replace(" ", "_"): event_type.strip().strip("`")
            for action, event_type in pairs}


def test_every_resource_and_action_maps_to_the_type_the_design_table_gives() -> None:
    """The design's catalogue (docs/architecture.md, the twin of DESIGN.md), resource by
    resource and action by action: the set of types alone would not notice two actions
    of one resource swapped, or a type moved to another resource."""
    rows = table_rows("docs/architecture.md", "## The catalogue (from the seed)")
    documented = {resource.split("`")[1]: _documented_pairs(actions)
                  for resource, actions in rows}
    assert documented == {r: dict(a) for r, a in cat.SEED_CATALOGUE.items()}
    assert Catalogue().resources() == documented
