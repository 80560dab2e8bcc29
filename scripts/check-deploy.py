#!/usr/bin/env python3
"""Checks that the deployment files run ShardForge's programs only with
flags the programs accept.

    check-deploy.py DEPLOY_DIR BIN_DIR

Reads what `kubectl apply -k DEPLOY_DIR/k8s` would apply (the resources
its kustomization.yaml lists, each of which must exist) and the services of
DEPLOY_DIR/compose/compose.yaml; finds every container's command line
(`command` and `args`, including `sh -c` scripts); and for every ShardForge
program it runs (`sf-*`), checks that each `--flag` appears in the
program's `--help` (BIN_DIR holds the binaries). Exits 1 naming each
unknown flag or program. Needs PyYAML.
"""

import pathlib
import re
import shlex
import subprocess
import sys

import yaml

SHELLS = {"sh", "bash", "/bin/sh", "/bin/bash"}
SEPARATORS = {";", "&&", "||", "|"}


def load_all(path):
    return [d for d in yaml.safe_load_all(path.read_text()) if d is not None]


def pod_specs(doc):
    """The pod specs of a workload object."""
    kind = doc.get("kind")
    spec = doc.get("spec") or {}
    if kind in ("Deployment", "StatefulSet", "DaemonSet", "ReplicaSet", "Job"):
        yield spec.get("template", {}).get("spec", {})
    elif kind == "CronJob":
        yield spec.get("jobTemplate", {}).get("spec", {}).get("template", {}).get("spec", {})
    elif kind == "Pod":
        yield spec


def as_list(value):
    if value is None:
        return []
    if isinstance(value, str):
        return shlex.split(value)
    return [str(v) for v in value]


def invocations(tokens):
    """(program, flags) for each ShardForge program a command line runs."""
    if len(tokens) >= 3 and tokens[0] in SHELLS and tokens[1] == "-c":
        tokens = shlex.split(" ".join(tokens[2:]), posix=True)
    out = []
    current = None
    for token in tokens:
        name = token.rsplit("/", 1)[-1]
        if token in SEPARATORS:
            current = None
        elif re.fullmatch(r"sf-[a-z]+", name):
            current = (name, [])
            out.append(current)
        elif current is not None and token.startswith("--"):
            current[1].append(token.split("=", 1)[0])
    return out


def command_lines(deploy):
    """(place, tokens) for every container of the Kubernetes bundle and
    every service of the compose file."""
    k8s = deploy / "k8s"
    kustomization = load_all(k8s / "kustomization.yaml")[0]
    for resource in kustomization.get("resources", []):
        path = k8s / resource
        if not path.is_file():
            yield (f"k8s/kustomization.yaml: resource {resource}", None)
            continue
        for doc in load_all(path):
            for spec in pod_specs(doc):
                for c in spec.get("initContainers", []) + spec.get("containers", []):
                    place = f"k8s/{resource}: {doc.get('kind')} {doc['metadata']['name']}, container {c.get('name')}"
                    yield (place, as_list(c.get("command")) + as_list(c.get("args")))
    compose = deploy / "compose" / "compose.yaml"
    if compose.is_file():
        for name, service in (load_all(compose)[0].get("services") or {}).items():
            tokens = as_list(service.get("entrypoint")) + as_list(service.get("command"))
            yield (f"compose/compose.yaml: service {name}", tokens)


def main():
    deploy, bins = pathlib.Path(sys.argv[1]), pathlib.Path(sys.argv[2])
    helps = {}
    problems = []
    checked = 0
    for place, tokens in command_lines(deploy):
        if tokens is None:
            problems.append(f"{place}: no such file")
            continue
        for program, flags in invocations(tokens):
            if program not in helps:
                exe = bins / program
                if not exe.is_file():
                    problems.append(f"{place}: {program} is not a ShardForge program")
                    helps[program] = None
                    continue
                run = subprocess.run([str(exe), "--help"], capture_output=True, text=True, timeout=60)
                helps[program] = run.stdout
            text = helps[program]
            if text is None:
                continue
            for flag in flags:
                checked += 1
                if not re.search(r"(?<![\w-])" + re.escape(flag) + r"(?![\w-])", text):
                    problems.append(f"{place}: {program} has no flag {flag}")
    for p in problems:
        print(p, file=sys.stderr)
    if problems:
        sys.exit(1)
    print(f"{checked} flags of {len(helps)} programs checked", file=sys.stderr)


if __name__ == "__main__":
    main()
