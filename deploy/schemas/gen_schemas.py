#!/usr/bin/env python3
"""Generate the JSON schemas kubeconform validates the chart against, offline.

Goal: `make chart-check` must validate every rendered manifest strictly without reaching
GitHub (kubeconform's default schema source, unreachable here). Method: derive the schemas
from the authoritative API definitions, fetched through the Go module proxy (a registry we can
reach) with `go mod download`:

* Kubernetes built-in kinds: `api/openapi-spec/swagger.json` of the Go module
  k8s.io/kubernetes@<version> (the OpenAPI v2 document the API server itself serves). Each kind
  becomes one standalone file whose `definitions` hold every type it reaches (local `$ref`s,
  so recursive types need no inlining), in kubeconform's layout
  `kubernetes/v<version>-standalone-strict/<kind>-<group>-<version>.json`.
* prometheus-operator kinds: the CRDs' `openAPIV3Schema` from
  `example/prometheus-operator-crd/*.yaml` of the Go module
  github.com/prometheus-operator/prometheus-operator@<version>, written as
  `crds/<group>/<kind>_<version>.json`.

Conversion rules (the same ones kubeconform's own openapi2jsonschema applies, re-derived):
strict mode adds `additionalProperties: false` to every object schema that lists properties and
says nothing else about extra keys (so a misspelt field fails); optional fields also accept
null; IntOrString accepts an integer or a string, Quantity a string or a number;
`x-kubernetes-int-or-string` becomes the same; descriptions and x-kubernetes-* extensions are
dropped to keep the vendored files small. The result is committed under deploy/schemas/ so
chart-check needs no download; rerun this after bumping a version:

    .venv/bin/python deploy/schemas/gen_schemas.py            # regenerate the vendored set
    .venv/bin/python deploy/schemas/gen_schemas.py --check    # exit 1 if they differ
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import yaml

HERE = Path(__file__).resolve().parent
K8S_VERSION = "v1.34.4"
PROMETHEUS_OPERATOR_VERSION = "v0.85.0"

# (apiVersion, kind) of every built-in object the chart can render. Add a line when a
# template gains a kind; chart-check fails with "could not find schema" until you do.
K8S_KINDS = [
    ("v1", "ConfigMap"),
    ("v1", "PersistentVolumeClaim"),
    ("v1", "Pod"),
    ("v1", "Secret"),
    ("v1", "Service"),
    ("v1", "ServiceAccount"),
    ("apps/v1", "StatefulSet"),
    ("batch/v1", "CronJob"),
    ("batch/v1", "Job"),
    ("networking.k8s.io/v1", "NetworkPolicy"),
    ("policy/v1", "PodDisruptionBudget"),
    ("rbac.authorization.k8s.io/v1", "Role"),
    ("rbac.authorization.k8s.io/v1", "RoleBinding"),
]
CRD_FILES = [
    "monitoring.coreos.com_servicemonitors.yaml",
    "monitoring.coreos.com_podmonitors.yaml",
    "monitoring.coreos.com_prometheusrules.yaml",
]

INT_OR_STRING = "io.k8s.apimachinery.pkg.util.intstr.IntOrString"
QUANTITY = "io.k8s.apimachinery.pkg.api.resource.Quantity"


def module_dir(module: str, version: str) -> Path:
    """Download a module through the Go proxy (or find it in the module cache); its dir."""
    out = subprocess.run(
        ["go", "mod", "download", "-json", f"{module}@{version}"],
        check=True,
        capture_output=True,
        text=True,
        env={**os.environ, "GOFLAGS": "-mod=mod"},
        cwd="/",
    )
    return Path(json.loads(out.stdout)["Dir"])


def kind_suffix(api_version: str) -> str:
    # kubeconform's naming: "-" + first label of the group, "-" + version; core is "-v1".
    group, _, version = api_version.rpartition("/")
    if not group:
        return f"-{version.lower()}"
    return f"-{group.split('.')[0].lower()}-{version.lower()}"


def allow_null(schema: dict[str, Any]) -> dict[str, Any]:
    t = schema.get("type")
    if isinstance(t, str):
        schema["type"] = [t, "null"]
        if "enum" in schema and None not in schema["enum"]:
            schema["enum"] = [*schema["enum"], None]
    return schema


def convert(node: Any, strict: bool) -> Any:
    """Translate one OpenAPI schema node into kubeconform's JSON-schema dialect."""
    if isinstance(node, list):
        return [convert(n, strict) for n in node]
    if not isinstance(node, dict):
        return node
    out: dict[str, Any] = {}
    for key, value in node.items():
        if key == "description" or key.startswith("x-kubernetes-") or key == "nullable":
            continue
        if key == "$ref":
            out[key] = value
        elif key == "properties":
            required = set(node.get("required", []))
            props = {}
            for name, sub in value.items():
                s = convert(sub, strict)
                if name not in required:
                    s = allow_null(s)
                props[name] = s
            out[key] = props
        elif key in ("items", "additionalProperties", "not"):
            out[key] = convert(value, strict) if isinstance(value, dict | list) else value
        elif key in ("allOf", "anyOf", "oneOf"):
            out[key] = [convert(v, strict) for v in value]
        elif key == "format" and value == "int-or-string":
            continue
        else:
            out[key] = copy.deepcopy(value)
    if node.get("x-kubernetes-int-or-string") or node.get("format") == "int-or-string":
        for k in ("type", "anyOf", "oneOf", "pattern"):
            out.pop(k, None)
        out["oneOf"] = [{"type": "string"}, {"type": "integer"}]
    if node.get("nullable"):
        allow_null(out)
    is_object = out.get("type") in ("object", ["object", "null"]) or "properties" in out
    if (
        strict
        and is_object
        and "properties" in out
        and "additionalProperties" not in out
        and not node.get("x-kubernetes-preserve-unknown-fields")
    ):
        out["additionalProperties"] = False
    return out


def refs(node: Any) -> set[str]:
    found: set[str] = set()
    if isinstance(node, dict):
        for k, v in node.items():
            if k == "$ref" and isinstance(v, str) and v.startswith("#/definitions/"):
                found.add(v.removeprefix("#/definitions/"))
            else:
                found |= refs(v)
    elif isinstance(node, list):
        for v in node:
            found |= refs(v)
    return found


def k8s_schemas(swagger: dict[str, Any], strict: bool) -> dict[str, dict[str, Any]]:
    defs: dict[str, Any] = swagger["definitions"]
    by_gvk: dict[tuple[str, str], str] = {}
    for name, d in defs.items():
        for gvk in d.get("x-kubernetes-group-version-kind", []):
            api = f"{gvk['group']}/{gvk['version']}" if gvk["group"] else gvk["version"]
            by_gvk.setdefault((api, gvk["kind"]), name)
    result = {}
    for api, kind in K8S_KINDS:
        root = by_gvk[(api, kind)]
        closure: set[str] = set()
        todo = [root]
        while todo:
            n = todo.pop()
            if n in closure:
                continue
            closure.add(n)
            todo.extend(refs(defs[n]) - closure)
        converted = {}
        for n in sorted(closure - {root}):
            if n == INT_OR_STRING:
                converted[n] = {"oneOf": [{"type": "string"}, {"type": "integer"}]}
            elif n == QUANTITY:
                converted[n] = {"oneOf": [{"type": "string"}, {"type": "number"}]}
            else:
                converted[n] = convert(defs[n], strict)
        schema = convert(defs[root], strict)
        schema["definitions"] = converted
        # kubeconform selects the file by kind and apiVersion; pin both inside as well.
        schema["properties"]["apiVersion"] = {"type": "string", "enum": [api]}
        schema["properties"]["kind"] = {"type": "string", "enum": [kind]}
        schema["required"] = sorted({*schema.get("required", []), "apiVersion", "kind"})
        schema = {"$schema": "http://json-schema.org/schema#", **schema}
        result[f"{kind.lower()}{kind_suffix(api)}.json"] = schema
    return result


def crd_schemas(crd_dir: Path, strict: bool) -> dict[str, dict[str, Any]]:
    result = {}
    for f in CRD_FILES:
        crd = yaml.safe_load((crd_dir / f).read_text())
        group = crd["spec"]["group"]
        kind = crd["spec"]["names"]["kind"]
        for v in crd["spec"]["versions"]:
            schema = convert(v["schema"]["openAPIV3Schema"], strict)
            api = f"{group}/{v['name']}"
            schema["properties"]["apiVersion"] = {"type": "string", "enum": [api]}
            schema["properties"]["kind"] = {"type": "string", "enum": [kind]}
            schema["required"] = sorted({*schema.get("required", []), "apiVersion", "kind"})
            schema = {"$schema": "http://json-schema.org/schema#", **schema}
            result[f"{group}/{kind.lower()}_{v['name']}.json"] = schema
    return result


def dump(schema: dict[str, Any]) -> str:
    return json.dumps(schema, separators=(",", ":"), sort_keys=True) + "\n"


def render_all() -> dict[Path, str]:
    k8s_dir = module_dir("k8s.io/kubernetes", K8S_VERSION)
    swagger = json.loads((k8s_dir / "api/openapi-spec/swagger.json").read_text())
    po_dir = module_dir(
        "github.com/prometheus-operator/prometheus-operator", PROMETHEUS_OPERATOR_VERSION
    )
    files: dict[Path, str] = {}
    out_k8s = HERE / "kubernetes" / f"{K8S_VERSION}-standalone-strict"
    for name, schema in k8s_schemas(swagger, strict=True).items():
        files[out_k8s / name] = dump(schema)
    crd_dir = po_dir / "example" / "prometheus-operator-crd"
    for name, schema in crd_schemas(crd_dir, strict=True).items():
        files[HERE / "crds" / name] = dump(schema)
    return files


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--check", action="store_true", help="fail if the vendored files differ")
    args = ap.parse_args()
    files = render_all()
    stale = [p for p, text in files.items() if not p.exists() or p.read_text() != text]
    if args.check:
        for p in stale:
            print(f"stale: {p.relative_to(HERE)}", file=sys.stderr)
        return 1 if stale else 0
    for p, text in files.items():
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text(text)
        print(f"{p.relative_to(HERE)}  {len(text) // 1024} KiB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
