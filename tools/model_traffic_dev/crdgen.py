"""Generate ``crds/`` from the pydantic models: one source of truth for schema and Python.

``python -m model_traffic_dev.crdgen`` writes the files; ``--check`` fails when they are out of date (the
test suite runs it). Pydantic's JSON schema is turned into a Kubernetes *structural* schema: references
inlined, ``Optional`` unwrapped, and nothing the API server rejects (titles, ``additionalProperties:
false``, numeric ``exclusiveMinimum``).
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel

from model_traffic.kinds.backend import spec as backend
from model_traffic.kinds.common import GROUP, VERSION
from model_traffic.kinds.metrictemplate import spec as metrictemplate
from model_traffic.kinds.trafficconfig import spec as trafficconfig
from model_traffic.kinds.virtualmodel import spec as virtualmodel

CATEGORY = "modeltraffic"


@dataclass(frozen=True)
class KindInfo:
    kind: str
    plural: str
    short_names: list[str]
    model: type[BaseModel]
    description: str
    printer_columns: list[dict[str, Any]] = field(default_factory=list)
    # CEL rules at the root of the schema: the only place a rule may read metadata.name.
    root_validations: list[dict[str, str]] = field(default_factory=list)
    cluster_scoped: bool = False
    has_status: bool = True  # the templates are only read: no status, no status subresource

    @property
    def singular(self) -> str:
        return self.kind.lower()

    @property
    def crd_name(self) -> str:
        return f"{self.plural}.{GROUP}"


def _ready_columns() -> list[dict[str, Any]]:
    return [
        {"name": "Ready", "type": "string", "jsonPath": '.status.conditions[?(@.type=="Ready")].status'},
        {"name": "Reason", "type": "string", "jsonPath": '.status.conditions[?(@.type=="Ready")].reason',
         "priority": 1},
        {"name": "Message", "type": "string", "jsonPath": '.status.conditions[?(@.type=="Ready")].message',
         "priority": 1},
        {"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp"},
    ]


# The two template kinds share one spec, so one set of columns.
METRIC_TEMPLATE_COLUMNS = [
    {"name": "Builtin", "type": "string", "jsonPath": ".spec.builtin"},
    {"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp"},
]

KINDS: list[KindInfo] = [
    KindInfo(
        kind=backend.KIND,
        plural=backend.PLURAL,
        short_names=["maisb"],
        model=backend.ManagedAIServiceBackend,
        description=backend.ManagedAIServiceBackend.__doc__ or "",
        printer_columns=[
            {"name": "Schema", "type": "string", "jsonPath": ".spec.schema.name"},
            {"name": "Endpoint", "type": "string", "jsonPath": ".status.endpointSummary"},
            *_ready_columns(),
        ],
        root_validations=backend.ROOT_VALIDATIONS,
    ),
    KindInfo(
        kind=virtualmodel.KIND,
        plural=virtualmodel.PLURAL,
        short_names=["vmodel"],
        model=virtualmodel.VirtualModel,
        description="A client-facing model name routed to weighted, prioritised backends.",
        printer_columns=[
            {"name": "Model", "type": "string", "jsonPath": ".status.modelName"},
            {"name": "Backends", "type": "string", "jsonPath": ".status.backendSummary"},
            *_ready_columns(),
        ],
        root_validations=virtualmodel.ROOT_VALIDATIONS,
    ),
    KindInfo(
        kind=trafficconfig.KIND,
        plural=trafficconfig.PLURAL,
        short_names=["trafficcfg"],
        model=trafficconfig.TrafficConfig,
        description="Progressive delivery of model versions served by KServe.",
        printer_columns=[
            {"name": "Strategy", "type": "string", "jsonPath": ".spec.strategy"},
            {"name": "Stable", "type": "string", "jsonPath": ".status.stableVersion"},
            {"name": "Candidate", "type": "string", "jsonPath": ".status.candidateVersion"},
            {"name": "Weight", "type": "integer", "jsonPath": ".status.canaryWeight"},
            {"name": "Phase", "type": "string", "jsonPath": ".status.phase"},
            {"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp"},
        ],
        root_validations=trafficconfig.ROOT_VALIDATIONS,
    ),
    KindInfo(
        kind=metrictemplate.KIND,
        plural=metrictemplate.PLURAL,
        short_names=["mtpl"],
        model=metrictemplate.MetricTemplate,
        description=metrictemplate.MetricTemplate.__doc__ or "",
        printer_columns=METRIC_TEMPLATE_COLUMNS,
        has_status=False,
    ),
    KindInfo(
        kind=metrictemplate.CLUSTER_KIND,
        plural=metrictemplate.CLUSTER_PLURAL,
        short_names=["cmtpl"],
        model=metrictemplate.ClusterMetricTemplate,
        description=metrictemplate.ClusterMetricTemplate.__doc__ or "",
        printer_columns=METRIC_TEMPLATE_COLUMNS,
        cluster_scoped=True,
        has_status=False,
    ),
]

_DROPPED_KEYS = {"title", "$defs", "discriminator"}


def structural(node: dict[str, Any], defs: dict[str, Any]) -> dict[str, Any]:
    """Turn one pydantic JSON-schema node into a Kubernetes structural schema node."""
    node = dict(node)
    if "$ref" in node:
        target = defs[node.pop("$ref").rsplit("/", 1)[-1]]
        # Keys beside the reference (the field's description, its CEL rules) win over the model's own.
        return structural({**target, **node}, defs)
    if "allOf" in node and len(node["allOf"]) == 1:
        inner = node.pop("allOf")[0]
        return structural({**inner, **node}, defs)
    if "anyOf" in node:
        options = [o for o in node.pop("anyOf") if o.get("type") != "null"]
        if len(options) != 1:
            raise ValueError(f"unions other than Optional[X] have no structural schema: {options}")
        merged = structural(options[0], defs)
        rules = merged.get("x-kubernetes-validations", []) + node.pop("x-kubernetes-validations", [])
        merged.update(structural(node, defs) if node else {})
        if rules:
            merged["x-kubernetes-validations"] = rules
        return merged

    out: dict[str, Any] = {}
    for key, value in node.items():
        if key in _DROPPED_KEYS:
            continue
        if key == "default":
            if value is not None:
                out[key] = _without_nulls(value)
            continue
        if key == "const":
            out["enum"] = [value]  # structural schemas have no const
            continue
        if key == "description":
            out[key] = " ".join(value.split())
            continue
        if key == "properties":
            out[key] = {name: structural(prop, defs) for name, prop in value.items()}
        elif key == "items":
            out[key] = structural(value, defs)
        elif key == "additionalProperties":
            if value is True or value == {}:
                out["x-kubernetes-preserve-unknown-fields"] = True
            elif isinstance(value, dict):
                out[key] = structural(value, defs)
        elif key in ("exclusiveMinimum", "exclusiveMaximum") and not isinstance(value, bool):
            out["minimum" if key == "exclusiveMinimum" else "maximum"] = value
            out[key] = True
        else:
            out[key] = value
    if out.get("type") == "object" and "properties" not in out and "additionalProperties" not in out:
        out["x-kubernetes-preserve-unknown-fields"] = True
    return out


def _without_nulls(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _without_nulls(v) for k, v in value.items() if v is not None}
    if isinstance(value, list):
        return [_without_nulls(v) for v in value]
    return value


def _fill_defaults_descriptions(schema: dict[str, Any]) -> None:
    """A default list/dict from default_factory is not useful in a CRD; drop empty ones."""
    for prop in schema.get("properties", {}).values():
        if prop.get("default") in ([], {}):
            del prop["default"]
        _fill_defaults_descriptions(prop)
    if "items" in schema:
        _fill_defaults_descriptions(schema["items"])


def openapi_schema(info: KindInfo) -> dict[str, Any]:
    raw = info.model.model_json_schema(by_alias=True, mode="validation")
    defs = raw.get("$defs", {})
    root = structural(raw, defs)
    _fill_defaults_descriptions(root)
    root.pop("required", None)
    root["description"] = " ".join(info.description.split())
    properties = root["properties"]
    properties["apiVersion"] = {"type": "string", "description": "APIVersion of this object."}
    properties["kind"] = {"type": "string", "description": "Kind of this object."}
    properties["metadata"] = {"type": "object"}
    root["required"] = ["spec"]
    if info.root_validations:
        root["x-kubernetes-validations"] = info.root_validations
    return {key: root[key] for key in ("description", "type", "required", "properties", "x-kubernetes-validations")
            if key in root}


def crd(info: KindInfo) -> dict[str, Any]:
    schema = openapi_schema(info)
    # A new object reads as not yet observed (observedGeneration 0 < generation 1) until the operator writes its
    # status: without it, Flux's kstatus calls an object without status Current before anyone looked at it.
    if info.has_status:
        schema["properties"]["status"]["default"] = {"observedGeneration": 0}
    version: dict[str, Any] = {"name": VERSION, "served": True, "storage": True}
    if info.has_status:
        version["subresources"] = {"status": {}}
    version["additionalPrinterColumns"] = info.printer_columns
    version["schema"] = {"openAPIV3Schema": schema}
    return {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {
            "name": info.crd_name,
            "labels": {"app.kubernetes.io/part-of": "model-traffic-operator"},
        },
        "spec": {
            "group": GROUP,
            "names": {
                "kind": info.kind,
                "listKind": f"{info.kind}List",
                "plural": info.plural,
                "singular": info.singular,
                "shortNames": info.short_names,
                "categories": [CATEGORY],
            },
            "scope": "Cluster" if info.cluster_scoped else "Namespaced",
            "versions": [version],
        },
    }


HEADER = "# Generated by `python -m model_traffic_dev.crdgen` from operator/model_traffic/kinds; do not edit.\n"


def render_files() -> dict[str, str]:
    return {
        f"{info.crd_name}.yaml": HEADER + yaml.safe_dump(crd(info), sort_keys=False, width=120)
        for info in KINDS
    }


def default_crd_dir() -> Path:
    return Path(__file__).resolve().parents[2] / "crds"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--dir", type=Path, default=default_crd_dir())
    parser.add_argument("--check", action="store_true", help="fail when the files are not up to date")
    parser.add_argument("--stdout", action="store_true",
                        help="print the CRDs as one YAML stream (e.g. for `kubectl apply -f -`)")
    args = parser.parse_args(argv)
    if args.stdout:
        sys.stdout.write("".join(f"---\n{text}" for _, text in sorted(render_files().items())))
        return 0
    return write_generated({args.dir / name: text for name, text in render_files().items()}, check=args.check,
                           regenerate="make crds")


def write_generated(files: dict[Path, str], *, check: bool, regenerate: str) -> int:
    """Write generated files that differ (only those), or with ``check`` name the stale ones and return 1."""
    stale = []
    for path, text in files.items():
        if path.exists() and path.read_text() == text:
            continue
        stale.append(path)
        if not check:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text)
    if check and stale:
        print(f"out of date (run `{regenerate}`): " + ", ".join(str(p) for p in stale), file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
