"""One folder per kind: its spec (the CRD), its pure render and its reconcile; `common` is what
every spec builds on. The generic pipeline that runs them is `model_traffic.pipeline`."""
