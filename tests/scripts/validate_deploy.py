"""Validates Kubernetes manifests offline.

Usage: validate_deploy.py --crds DIR... [--manifest FILE]... [--custom FILE]...

--manifest files are checked with kubernetes-validate --strict (built-in kinds and CRDs);
--custom files hold custom resources, checked against the openAPIV3Schema of the CRDs found
in the --crds directories, strictly: a field the schema does not name is an error, as with
`kubectl apply --validate=strict`; Kubernetes' own kinds among them are checked as --manifest
files are. Prints one line per problem; exits 1 if there is any.
"""

import argparse
import copy
import pathlib
import sys

import jsonschema
import kubernetes_validate
import yaml


def strict(schema):
    """The schema with OpenAPI's `nullable` as JSON Schema, and unknown fields refused."""
    schema = copy.deepcopy(schema)

    def walk(node):
        if not isinstance(node, dict):
            return
        if node.pop("nullable", False) and "type" in node:
            node["type"] = [node["type"], "null"]
        if "properties" in node and "additionalProperties" not in node \
                and not node.get("x-kubernetes-preserve-unknown-fields"):
            node["additionalProperties"] = False
        for value in node.values():
            if isinstance(value, dict):
                walk(value)
            elif isinstance(value, list):
                for item in value:
                    walk(item)

    walk(schema)
    # Every object has these, whatever its kind.
    schema.setdefault("properties", {}).update(
        apiVersion={"type": "string"}, kind={"type": "string"}, metadata={"type": "object"})
    return schema


def load_crds(directory):
    schemas = {}
    for path in sorted(pathlib.Path(directory).rglob("*.yaml")):
        for doc in yaml.safe_load_all(path.read_text()):
            if not doc or doc.get("kind") != "CustomResourceDefinition":
                continue
            spec = doc["spec"]
            for version in spec["versions"]:
                key = (f"{spec['group']}/{version['name']}", spec["names"]["kind"])
                schemas[key] = strict(version["schema"]["openAPIV3Schema"])
    return schemas


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--crds", action="append", required=True)
    parser.add_argument("--manifest", action="append", default=[])
    parser.add_argument("--custom", action="append", default=[])
    args = parser.parse_args()
    problems = []

    def builtin(path, doc):
        try:
            kubernetes_validate.validate(doc, "1.37.0", strict=True)
        except kubernetes_validate.ValidationError as error:
            where = "/".join(str(p) for p in error.path)
            problems.append(f"{path}: {doc.get('kind')} {doc.get('metadata', {}).get('name')}: "
                            f"{where}: {error.message}")
        except Exception as error:  # unknown kinds, bad versions
            problems.append(f"{path}: {doc.get('kind')}: {error}")

    for path in args.manifest:
        for doc in yaml.safe_load_all(pathlib.Path(path).read_text()):
            if doc:
                builtin(path, doc)
    schemas = {}
    for directory in args.crds:
        schemas.update(load_crds(directory))
    for path in args.custom:
        for doc in yaml.safe_load_all(pathlib.Path(path).read_text()):
            if not doc:
                continue
            key = (doc.get("apiVersion"), doc.get("kind"))
            name = doc.get("metadata", {}).get("name")
            schema = schemas.get(key)
            # Kubernetes' own kinds (core or a group without a dot) beside the custom ones.
            if schema is None and "." not in (key[0] or "").split("/")[0]:
                builtin(path, doc)
                continue
            if schema is None:
                problems.append(f"{path}: {key[1]} {name}: no CRD serves {key[0]} {key[1]}")
                continue
            validator = jsonschema.Draft7Validator(schema)
            for error in sorted(validator.iter_errors(doc), key=lambda e: list(e.path)):
                where = ".".join(str(p) for p in error.path)
                problems.append(f"{path}: {key[1]} {name}: {where}: {error.message}")
    for problem in problems:
        print(problem)
    if problems:
        sys.exit(1)
    print(f"validated {len(args.manifest)} manifest file(s) and {len(args.custom)} custom "
          f"resource file(s)")


if __name__ == "__main__":
    main()
