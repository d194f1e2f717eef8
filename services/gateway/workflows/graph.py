"""A workflow's graph, checked before anything is stored: every ``step`` a dependency
names exists, each names a step or a job (not both), and the steps form no cycle."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from services.gateway.workflows.schemas import WorkflowStep
from shared.errors import Invalid


def _loc(name: str, i: int, field: str) -> list[Any]:
    return ["body", "steps", name, "depends_on", i, field]


def check_refs(steps: Mapping[str, WorkflowStep]) -> None:
    """422 for a dependency that names an unknown step, or neither or both of a step and a
    job."""
    errors: list[dict[str, Any]] = []
    for name, step in steps.items():
        for i, dep in enumerate(step.depends_on or ()):
            if ("step" in dep) == ("job" in dep):
                errors.append({"loc": _loc(name, i, "step"), "msg": "name a step or a job"})
            elif "step" in dep and dep["step"] not in steps:
                errors.append(
                    {"loc": _loc(name, i, "step"), "msg": f"no such step: {dep['step']!r}"}
                )
    if errors:
        raise Invalid("a dependency names no step of the workflow", errors=errors)


def order(steps: Mapping[str, WorkflowStep]) -> list[str]:
    """The steps, each after the steps it depends on; 422 naming the steps of a cycle."""
    after: dict[str, set[str]] = {
        name: {d["step"] for d in step.depends_on or () if "step" in d}
        for name, step in steps.items()
    }
    done: list[str] = []
    placed: set[str] = set()
    ready = sorted(n for n, before in after.items() if not before)
    dependents: dict[str, list[str]] = {n: [] for n in steps}
    for name, before in after.items():
        for b in before:
            dependents[b].append(name)
    waiting = {n: len(before) for n, before in after.items()}
    while ready:
        name = ready.pop()
        done.append(name)
        placed.add(name)
        for d in dependents[name]:
            waiting[d] -= 1
            if waiting[d] == 0:
                ready.append(d)
    if len(done) < len(steps):
        cycle = sorted(n for n in steps if n not in placed)
        raise Invalid(
            f"the steps' dependencies form a cycle (among {', '.join(cycle)})",
            errors=[
                {"loc": ["body", "steps", n, "depends_on"], "msg": "in a cycle"} for n in cycle
            ],
        )
    return done
