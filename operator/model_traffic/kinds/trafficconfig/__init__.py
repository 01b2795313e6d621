"""TrafficConfig: progressive delivery on KServe. `spec` (with `inferenceservice`, the template it
takes) is its CRD, `render` the pure render and rollout, `analysis` the metric checks, `reconcile`
observe and status."""
