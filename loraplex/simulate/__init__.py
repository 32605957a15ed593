"""Capacity planner: ``loraplex simulate`` replays traffic through the real routing and scaling.

A SimPy discrete-event simulation. These project objects are imported, not copied:

* the replica picker (:mod:`loraplex.router.pick`) and the router's retry bound
  (``RouterSettings.attempts``), in :mod:`.scenarios`;
* the scaling policy (:mod:`loraplex.operator.scaling`) and the operator's rate estimator
  (:mod:`loraplex.operator.rates`), in :mod:`.scenarios`;
* the worker's adapter cache (``AdapterCache``, ``disk_evictions`` of
  :mod:`loraplex.worker.adapters`), in :mod:`.adapters`, and the worker's queue policy
  (``GroupingQueue`` of :mod:`loraplex.worker.queue`), in :mod:`.fleet`: simulated replicas
  choose their next job and evict adapters as real workers do;
* defaults from the components' settings (operator interval and rate window, worker
  ``max_overtake``), in :mod:`.config`.

What is the model's own: service times (switch seconds by tier, inference, warm-up), in
:mod:`.fleet` and :mod:`.adapters`. Inputs are pydantic models (:mod:`.config`), traffic comes
from a trace or a generator (:mod:`.traffic`), figures from :mod:`.results`, PNGs from
:mod:`.plots`.
"""
