"""VirtualModel: a model name routed to weighted, prioritised backends (AIGatewayRoute,
BackendTrafficPolicy). `spec` is its CRD, `render` the pure render, `reconcile` observe and status."""
