#!/usr/bin/env python3
"""Checks the deployment files against the programs they run.

    check-deploy.py DEPLOY_DIR BIN_DIR

Renders what `kubectl apply -k DEPLOY_DIR/k8s` would apply with `kubectl
kustomize` (the kubectl on PATH, or $KUBECTL; every resource the
kustomization lists must exist) and reads the services of
DEPLOY_DIR/compose/compose.yaml. In the rendered objects: every object has
a kind and a name; every ConfigMap, Secret and PersistentVolumeClaim a pod
mounts or reads is among them; every Service selects the pods of some
workload and targets a port they declare; every probe's named port is
declared. For every container's command line (`command` and `args`,
including `sh -c` scripts) running a ShardForge program (`sf-*`), each
`--flag` must appear in the program's `--help` (BIN_DIR holds the
binaries). Exits 1 naming each problem. Needs PyYAML.
"""

import pathlib
import os
import re
import shlex
import shutil
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


def render(k8s, problems):
    """The objects `kubectl kustomize k8s` renders, or [] after recording
    why there are none."""
    kustomization = load_all(k8s / "kustomization.yaml")[0]
    missing = [r for r in kustomization.get("resources", []) if not (k8s / r).exists()]
    for resource in missing:
        problems.append(f"k8s/kustomization.yaml: resource {resource}: no such file")
    if missing:
        return []
    kubectl = os.environ.get("KUBECTL") or shutil.which("kubectl")
    if kubectl is None:
        problems.append("kubectl is not installed (scripts/test.sh installs Debian's kubernetes-client)")
        return []
    run = subprocess.run([kubectl, "kustomize", str(k8s)], capture_output=True, text=True, timeout=120)
    if run.returncode != 0:
        last = (run.stderr.strip().splitlines() or ["no message"])[-1]
        problems.append(f"k8s: kubectl kustomize failed: {last}")
        return []
    return [d for d in yaml.safe_load_all(run.stdout) if d is not None]


def containers(spec):
    return (spec.get("initContainers") or []) + (spec.get("containers") or [])


def check_objects(objects, problems):
    """References between the rendered objects resolve."""
    names = {(o.get("kind"), (o.get("metadata") or {}).get("name")) for o in objects}
    workloads = []
    for o in objects:
        kind, name = o.get("kind"), (o.get("metadata") or {}).get("name")
        if not kind or not name:
            problems.append(f"k8s: an object without a kind or a name: {str(o)[:80]}")
            continue
        for spec in pod_specs(o):
            place = f"k8s: {kind} {name}"
            labels = {}
            if kind == "CronJob":
                template = o["spec"]["jobTemplate"]["spec"].get("template", {})
            else:
                template = o["spec"].get("template", {})
            labels = (template.get("metadata") or {}).get("labels") or {}
            ports = {}
            for c in containers(spec):
                if not c.get("image"):
                    problems.append(f"{place}, container {c.get('name')}: no image")
                for p in c.get("ports") or []:
                    ports[p.get("name")] = p.get("containerPort")
                    ports[p.get("containerPort")] = p.get("containerPort")
                for ref in c.get("envFrom") or []:
                    for key, want in (("configMapRef", "ConfigMap"), ("secretRef", "Secret")):
                        if key in ref and not ref[key].get("optional") and (want, ref[key].get("name")) not in names:
                            problems.append(f"{place}, container {c.get('name')}: no {want} {ref[key].get('name')}")
                for env in c.get("env") or []:
                    source = env.get("valueFrom") or {}
                    for key, want in (("configMapKeyRef", "ConfigMap"), ("secretKeyRef", "Secret")):
                        if key in source and not source[key].get("optional") and (want, source[key].get("name")) not in names:
                            problems.append(f"{place}, env {env.get('name')}: no {want} {source[key].get('name')}")
            for c in containers(spec):
                for probe_name in ("startupProbe", "readinessProbe", "livenessProbe"):
                    probe = c.get(probe_name) or {}
                    for handler in ("httpGet", "grpc", "tcpSocket"):
                        port = (probe.get(handler) or {}).get("port")
                        if isinstance(port, str) and port not in ports:
                            problems.append(f"{place}, container {c.get('name')}: {probe_name} port {port} is not declared")
            for volume in spec.get("volumes") or []:
                for key, want, field in (
                    ("configMap", "ConfigMap", "name"),
                    ("secret", "Secret", "secretName"),
                    ("persistentVolumeClaim", "PersistentVolumeClaim", "claimName"),
                ):
                    if key in volume and not volume[key].get("optional") and (want, volume[key].get(field)) not in names:
                        problems.append(f"{place}, volume {volume.get('name')}: no {want} {volume[key].get(field)}")
            workloads.append((labels, ports))
    for o in objects:
        if o.get("kind") != "Service":
            continue
        name = o["metadata"]["name"]
        selector = (o.get("spec") or {}).get("selector") or {}
        matching = [ports for labels, ports in workloads if selector and all(labels.get(k) == v for k, v in selector.items())]
        if not matching:
            problems.append(f"k8s: Service {name} selects no workload's pods ({selector})")
            continue
        for port in (o.get("spec") or {}).get("ports") or []:
            target = port.get("targetPort", port.get("port"))
            if not any(target in ports for ports in matching):
                problems.append(f"k8s: Service {name}: port {port.get('name')} targets {target}, which its pods do not declare")


def command_lines(deploy, problems):
    """(place, tokens) for every container of the rendered Kubernetes
    bundle and every service of the compose file."""
    objects = render(deploy / "k8s", problems)
    check_objects(objects, problems)
    for doc in objects:
        for spec in pod_specs(doc):
            for c in containers(spec):
                place = f"k8s: {doc.get('kind')} {doc['metadata']['name']}, container {c.get('name')}"
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
    for place, tokens in command_lines(deploy, problems):
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
    print(f"{checked} flags of {len(helps)} programs checked in the rendered objects", file=sys.stderr)


if __name__ == "__main__":
    main()
