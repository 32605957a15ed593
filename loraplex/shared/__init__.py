"""What the router, worker and operator share: the worker contract, model ids, domain errors,
Kubernetes names, the settings base, metric names and logging. Imports no component and no tool."""
