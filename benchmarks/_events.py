"""Realistic audit traffic for the collector benchmarks, deterministic from a seed.

A platform of 50 organizations with 200 workspaces and 1,000 users: each user belongs
to one to three organizations and signs in from one to three addresses; a few users
do most of the work (activity falls off as 1/rank^0.8); every type of the seed
catalogue occurs, runs and data-explorer files most often; the application's own
``system`` events (``credentials_accessed``, ``run_dropped``) carry no client IP, and
``user_sign_in`` carries its method in ``status``, as DESIGN.md describes.

``Population.draw`` gives the arguments of ``emit()`` (the throughput and memory
benchmarks emit them); ``Population.records`` gives complete schema-v1 records with
UUIDv7 ids, RFC 3339 times and, for 70 % of the request events, trace and span ids (the
query benchmark stores them directly).
"""

from __future__ import annotations

import random
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, Final

from audit_middleware.catalogue import SEED_CATALOGUE
from audit_middleware.event import FIELDS, SCHEMA_VERSION, format_created

ORGS: Final = 50
WORKSPACES: Final = 200
PRINCIPALS: Final = 1000
SYSTEM: Final = "system"
TRACED: Final = 0.7  # share of request events stored with an OpenTelemetry trace

#: Relative frequency of each resource's events (per event type of that resource).
_RESOURCE_WEIGHT: Final = {
    "run": 30, "bucket_file": 25, "credentials": 12, "user_session": 40, "pipeline": 4,
    "pipeline_action": 2, "pipeline_secret": 2, "bucket": 2, "compute_env": 2,
    "participant": 2, "access_token": 2, "team": 1, "user": 1, "workspace": 1,
    "organization": 1,
}
_SYSTEM_TYPES: Final = frozenset({"credentials_accessed", "run_dropped"})
_STATUS: Final = {
    "user_sign_in": ("password", "github", "google", "saml"),
    "run_completed": ("succeeded", "failed", "cancelled"),
    "run_status_changed": ("submitted", "running", "succeeded", "failed"),
    "participant_role_updated": ("owner", "admin", "maintain", "launch", "view"),
}
_TARGET_PREFIX: Final = {
    "run": "run", "bucket_file": "file", "credentials": "cred", "user_session": "ses",
    "pipeline": "pipe", "pipeline_action": "act", "pipeline_secret": "sec",
    "bucket": "bkt", "compute_env": "ce", "participant": "part", "access_token": "tok",
    "team": "team", "user": "usr", "workspace": "ws", "organization": "org",
}

#: emit() arguments: type, target, principal, status, org_id, org_name, workspace_id,
#: workspace_name, client_ip.
Draw = tuple[str, str, str, str, str, str, str, str, str]


@dataclass(frozen=True)
class Member:
    principal: str
    orgs: tuple[int, ...]
    addresses: tuple[str, ...]


def _hex(rng: random.Random, digits: int) -> str:
    return f"{rng.getrandbits(4 * digits):0{digits}x}"


class Population:
    def __init__(self, seed: int = 7) -> None:
        rng = random.Random(seed)
        self.orgs = [(f"org_{_hex(rng, 10)}", f"Organization {i:02d}") for i in range(ORGS)]
        # Every organization has at least one workspace; the rest go to random ones.
        owners = list(range(ORGS)) + [rng.randrange(ORGS) for _ in range(WORKSPACES - ORGS)]
        self.workspaces = [(f"ws_{_hex(rng, 10)}", f"workspace-{w:03d}", owner)
                           for w, owner in enumerate(owners)]
        self.by_org: dict[int, list[int]] = {}
        for w, (_, _, owner) in enumerate(self.workspaces):
            self.by_org.setdefault(owner, []).append(w)
        self.members = [
            Member(f"usr_{_hex(rng, 12)}",
                   tuple(rng.sample(range(ORGS), rng.choice((1, 1, 2, 3)))),
                   tuple(f"{rng.choice((10, 172, 192, 203))}.{rng.randrange(256)}."
                         f"{rng.randrange(256)}.{rng.randrange(1, 255)}"
                         for _ in range(rng.choice((1, 2, 3)))))
            for _ in range(PRINCIPALS)
        ]
        self.activity = [1.0 / (rank + 1) ** 0.8 for rank in range(PRINCIPALS)]
        self.types = [(t, resource) for resource, actions in SEED_CATALOGUE.items()
                      for t in actions.values()]
        self.type_weights = [_RESOURCE_WEIGHT[resource] for _, resource in self.types]

    def draw(self, n: int, rng: random.Random) -> list[Draw]:
        """``n`` events' emit() arguments."""
        members = rng.choices(self.members, self.activity, k=n)
        types = rng.choices(self.types, self.type_weights, k=n)
        out: list[Draw] = []
        for member, (kind, resource) in zip(members, types):
            org_i = rng.choice(member.orgs)
            org_id, org_name = self.orgs[org_i]
            ws_id, ws_name, _ = self.workspaces[rng.choice(self.by_org[org_i])]
            status = rng.choice(_STATUS[kind]) if kind in _STATUS else ""
            target = f"{_TARGET_PREFIX[resource]}_{_hex(rng, 12)}"
            if kind in _SYSTEM_TYPES:
                out.append((kind, target, SYSTEM, status, org_id, org_name, ws_id, ws_name,
                            ""))
            elif resource in ("user_session", "user", "organization"):
                # Not inside an organization: sign-ins, user and organization admin.
                out.append((kind, target, member.principal, status, "", "", "", "",
                            rng.choice(member.addresses)))
            elif resource in ("team", "participant", "workspace"):
                out.append((kind, target, member.principal, status, org_id, org_name, "",
                            "", rng.choice(member.addresses)))
            else:
                out.append((kind, target, member.principal, status, org_id, org_name, ws_id,
                            ws_name, rng.choice(member.addresses)))
        return out

    def records(self, n: int, start_ns: int, span_ns: int, seed: int = 11,
                batch: int = 50_000) -> Iterator[list[dict[str, Any]]]:
        """``n`` schema-v1 records, batch by batch, their times spread over
        ``[start_ns, start_ns + span_ns)`` in arrival order (ascending)."""
        rng = random.Random(seed)
        step = span_ns / n
        done = 0
        while done < n:
            size = min(batch, n - done)
            records = []
            for i, fields in enumerate(self.draw(size, rng)):
                # Even arrival with jitter, never out of order: a collector stores in
                # arrival order, and apps stamp events just before sending them.
                ns = start_ns + int((done + i + rng.random()) * step)
                event = record(fields, ns, rng.getrandbits(62))
                if fields[2] != SYSTEM and rng.random() < TRACED:
                    event["trace_id"] = _hex(rng, 32)
                    event["span_id"] = _hex(rng, 16)
                records.append(event)
            done += size
            yield records


def uuid7(ns: int, rand: int) -> str:
    ms = ns // 1_000_000
    return (f"{ms >> 16 & 0xFFFF_FFFF:08x}-{ms & 0xFFFF:04x}-"
            f"{0x7000 | rand >> 50 & 0xFFF:04x}-{0x8000 | rand >> 48 & 0x3FFF:04x}-"
            f"{rand & 0xFFFF_FFFF_FFFF:012x}")


def record(fields: Draw, ns: int, rand: int) -> dict[str, Any]:
    """The schema-v1 record of one drawn event at time ``ns`` (fields in schema order)."""
    kind, target, principal, status, org_id, org_name, ws_id, ws_name, client_ip = fields
    values = (SCHEMA_VERSION, uuid7(ns, rand), kind, target, principal, status, org_id,
              org_name, ws_id, ws_name, client_ip, format_created(ns), "", "")
    return dict(zip(FIELDS, values))
