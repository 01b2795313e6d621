"""Development tooling, kept out of the shipped package: the local stack (`localcluster`), `make demo`
(`demo`), `make crds` (`crdgen`) and `make docs` (`docgen`). Importable from tools/ (pytest's
`pythonpath`, the venv's model_traffic_dev.pth written by `make venv`, mypy's `mypy_path`)."""
