"""ManagedAIServiceBackend: one LLM backend as Backend, AIServiceBackend, BackendSecurityPolicy
and QuotaPolicy. `spec` is its CRD, `render` the pure render, `reconcile` observe and status."""
