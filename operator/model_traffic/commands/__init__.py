"""What people run against a cluster through `model-traffic` (cli.py): rollout edits (`ctl`),
tenant API keys (`keys`), usage by model, tenant or day (`usage`), a rollout at a glance
(`rolloutview`). The operator process never imports them."""
