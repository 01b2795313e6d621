"""The generic path every kind runs: work queue and watch caches -> the kind's observe and pure render
(a `plan`) -> server-side `apply` -> `acceptance` by the downstream controllers -> `result` ->
status `conditions` and `events`, driven by `runtime`."""
