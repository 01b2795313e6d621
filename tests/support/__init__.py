"""Test helpers that run real local servers: a Prometheus with a gen_ai_* exporter, a webhook receiver."""
