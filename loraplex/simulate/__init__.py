"""Capacity planner: ``loraplex simulate`` replays traffic through the real routing and scaling.

A SimPy discrete-event simulation. Workers are modelled by service times (:mod:`.fleet`); the
replica picker (:mod:`loraplex.router.pick`) and the scaling policy
(:mod:`loraplex.operator.scaling`) are the project's own objects, imported, not copied
(:mod:`.scenarios`). Inputs are pydantic models (:mod:`.config`), traffic comes from a trace
or a generator (:mod:`.traffic`), figures from :mod:`.results`, PNGs from :mod:`.plots`.
"""
