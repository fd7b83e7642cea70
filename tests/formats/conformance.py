"""The checks every format test uses: an OCSF event against the published OCSF 1.3.0
schema (``ocsf_schema``), an ECS document against the published ECS field list and
allowed values (``ecs_schema``). Each returns the list of problems (empty: conforms)."""

from tests.formats.ecs_schema import ecs_problems, flatten
from tests.formats.ocsf_schema import ocsf_problems

__all__ = ["ecs_problems", "flatten", "ocsf_problems"]
