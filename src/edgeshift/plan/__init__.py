"""Placement planning: which site, node pool and model variant each workload should run on.

``plan_scenario(path)`` runs the whole pipeline on a scenario file; the pure core
(``plan_problem`` on a hand-built :class:`Problem`) needs no files. See docs/plan.md.
"""

from edgeshift.plan.pipeline import PlanResult, plan_problem, plan_scenario, plan_summary
from edgeshift.plan.problem import Problem
from edgeshift.plan.scenario import Scenario, load_scenario, parse_scenario

__all__ = [
    "PlanResult",
    "Problem",
    "Scenario",
    "load_scenario",
    "parse_scenario",
    "plan_problem",
    "plan_scenario",
    "plan_summary",
]
