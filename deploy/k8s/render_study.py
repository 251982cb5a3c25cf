#!/usr/bin/env python3
"""Render the Kubernetes manifest of one study's coordinator: a one-replica StatefulSet with its
SQLite store on a PersistentVolumeClaim, its Services, and references to its kit Secrets.

    python deploy/k8s/render_study.py --study dialysis > study-dialysis.yaml
    kubectl apply -f study-dialysis.yaml

The template *is* `deploy/k8s/coordinator.yaml`: every name it gives (the Services, the
StatefulSet, the two Secrets) is replaced by one that ends with the study's name, behind a prefix
per kind of object, so that no two studies' names meet; every label and selector becomes
`app.kubernetes.io/name: concordia-study-coordinator, app.kubernetes.io/instance: <study>`. So
two studies, or a study and coordinator.yaml itself, in one namespace never share a Service, a
pod, a volume or a kit. Everything else — image, security context, probes, resources, volumes —
is the coordinator manifest's own, so the two cannot drift apart. Each
replacement must match the template exactly as often as expected; if coordinator.yaml changes
shape, this script says what it no longer finds instead of rendering something half-renamed.

Standard library only: it runs wherever `kubectl` does, and in `make lint-deploy`, which
validates two rendered studies with kubernetes-validate like the committed manifests.
"""

from __future__ import annotations

import argparse
import re
import sys
from dataclasses import dataclass
from pathlib import Path

TEMPLATE = Path(__file__).resolve().parent / "coordinator.yaml"

# A study name becomes part of DNS-1123 names (at most 63 characters) such as
# "concordia-study-<study>-headless", and the StatefulSet's own name must leave room for the
# controller-revision-hash label (name + "-" + 10 characters <= 63): 30 keeps every name valid.
STUDY_PATTERN = re.compile(r"[a-z]([-a-z0-9]{0,28}[a-z0-9])?")
SERVICE_TYPES = ("LoadBalancer", "NodePort", "ClusterIP")
QUANTITY = re.compile(r"[0-9]+(\.[0-9]+)?(Ki|Mi|Gi|Ti|Pi|Ei|k|M|G|T|P|E)?")

BASE = "concordia-coordinator"
LABEL = "{app.kubernetes.io/name: concordia-coordinator"
# A study's pods are labelled apart from coordinator.yaml's, so that manifest's Service, if it
# runs in the same namespace, never selects a study's pod; `instance` keeps studies apart.
NAME_LABEL = "concordia-study-coordinator"


class TemplateChanged(Exception):
    """coordinator.yaml no longer has the shape this renderer replaces names in."""


@dataclass(frozen=True)
class Study:
    """What a study's manifest is parameterised by."""

    name: str
    image: str | None = None  # None: the image coordinator.yaml names
    namespace: str | None = None  # None: the namespace of kubectl's current context
    storage: str | None = None  # None: coordinator.yaml's request
    storage_class: str | None = None  # None: the cluster's default StorageClass
    service_type: str | None = None  # None: coordinator.yaml's (LoadBalancer)

    @property
    def prefix(self) -> str:
        """The name of the study's StatefulSet and its (LoadBalancer) Service."""
        return f"concordia-study-{self.name}"

    @property
    def headless(self) -> str:
        """The headless Service that gives the pod its stable DNS name."""
        return f"concordia-headless-{self.name}"

    @property
    def kit_secret(self) -> str:
        """The Secret holding the study's coordinator kit (kits/<study>/coordinator/)."""
        return f"concordia-kit-{self.name}"

    @property
    def probe_secret(self) -> str:
        """The Secret holding the study's health-probe operator kit (its `viewer`)."""
        return f"concordia-probe-kit-{self.name}"


def check_study(study: Study) -> None:
    """Raise ValueError naming the bad parameter and what would be accepted."""
    if not STUDY_PATTERN.fullmatch(study.name):
        raise ValueError(
            f"--study {study.name!r}: use 1-30 lowercase letters, digits and '-', starting with"
            " a letter and not ending with '-' (it becomes part of Kubernetes names)"
        )
    if study.namespace is not None and not re.fullmatch(
        r"[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?", study.namespace
    ):
        raise ValueError(f"--namespace {study.namespace!r}: not a DNS-1123 label")
    if study.image is not None and (not study.image or re.search(r"\s", study.image)):
        raise ValueError(f"--image {study.image!r}: an image reference has no spaces")
    if study.storage is not None and not QUANTITY.fullmatch(study.storage):
        raise ValueError(f"--storage {study.storage!r}: a Kubernetes quantity such as 20Gi")
    if study.storage_class is not None and not re.fullmatch(
        r"[a-z0-9]([-.a-z0-9]{0,251}[a-z0-9])?", study.storage_class
    ):
        raise ValueError(f"--storage-class {study.storage_class!r}: not a StorageClass name")
    if study.service_type is not None and study.service_type not in SERVICE_TYPES:
        raise ValueError(
            f"--service-type {study.service_type!r}: one of {', '.join(SERVICE_TYPES)}"
        )


def _replace(text: str, old: str, new: str, count: int) -> str:
    """`text` with `old` replaced by `new`, which must occur exactly `count` times."""
    found = text.count(old)
    if found != count:
        raise TemplateChanged(
            f"{TEMPLATE.name}: expected {count} occurrence(s) of {old!r}, found {found};"
            " update deploy/k8s/render_study.py to the manifest's new shape"
        )
    return text.replace(old, new)


def _sub(text: str, pattern: str, new: str) -> str:
    """`text` with the one match of `pattern` replaced by `new`."""
    found = len(re.findall(pattern, text))
    if found != 1:
        raise TemplateChanged(
            f"{TEMPLATE.name}: expected one match of {pattern!r}, found {found};"
            " update deploy/k8s/render_study.py to the manifest's new shape"
        )
    return re.sub(pattern, new.replace("\\", "\\\\"), text)


def _body(template: str) -> str:
    """The template without its leading comment (the study's own header replaces it)."""
    start = template.find("apiVersion:")
    if start < 0:
        raise TemplateChanged(f"{TEMPLATE.name}: no manifest in it")
    return template[start:]


def _header(study: Study) -> str:
    """What an operator must do before applying the rendered manifest, with the study's names."""
    ns = f" --namespace {study.namespace}" if study.namespace is not None else ""
    return "\n".join(
        [
            f"# The coordinator of study {study.name!r}, rendered by deploy/k8s/render_study.py",
            "# from deploy/k8s/coordinator.yaml (edit that, not this output). The study is its own",
            "# consortium: its own CA, roster and kits (fedctl provision STUDY.toml --out",
            f"# kits/{study.name}/), whose [coordinator] hosts name the address its sites dial",
            "# (this Service's). Create its two Secrets from those kits, then apply:",
            "#",
            f"#   kubectl{ns} create secret generic {study.kit_secret} \\",
            f"#       --from-file=kits/{study.name}/coordinator/",
            f"#   kubectl{ns} create secret generic {study.probe_secret} \\",
            f"#       --from-file=ca.pem=kits/{study.name}/operators/healthcheck/ca.pem \\",
            f"#       --from-file=client.pem=kits/{study.name}/operators/healthcheck/client.pem \\",
            f"#       --from-file=client.key=kits/{study.name}/operators/healthcheck/client.key",
            "",
        ]
    )


def render(study: Study, template: str | None = None) -> str:
    """The study's manifest (YAML, three documents: Service, headless Service, StatefulSet)."""
    check_study(study)
    text = _body(TEMPLATE.read_text() if template is None else template)
    p = study.prefix
    instance = f"app.kubernetes.io/instance: {study.name}"
    text = _replace(text, f"name: {BASE}-headless\n", f"name: {study.headless}\n", 1)
    text = _replace(text, f"serviceName: {BASE}-headless\n", f"serviceName: {study.headless}\n", 1)
    text = _replace(text, f"  name: {BASE}\n", f"  name: {p}\n", 2)  # Service, StatefulSet
    text = _replace(text, f"secretName: {BASE}-kit,", f"secretName: {study.kit_secret},", 1)
    text = _replace(
        text, "secretName: concordia-health-probe-kit,", f"secretName: {study.probe_secret},", 1
    )
    # labels (2 Services, StatefulSet, pod template) and selectors (2 Services, matchLabels)
    text = _replace(text, LABEL, f"{{app.kubernetes.io/name: {NAME_LABEL}, {instance}", 7)
    if study.image is not None:
        text = _sub(text, r"image: \S+", f"image: {study.image}")
    if study.storage is not None:
        text = _sub(text, r"\{storage: [^}]+\}", f"{{storage: {study.storage}}}")
    if study.storage_class is not None:
        old = '        accessModes: ["ReadWriteOnce"]\n'
        new = f"{old}        storageClassName: {study.storage_class}\n"
        text = _replace(text, old, new, 1)
    if study.service_type is not None:
        text = _replace(text, "  type: LoadBalancer\n", f"  type: {study.service_type}\n", 1)
    if study.namespace is not None:
        text = _replace(text, "\nmetadata:\n", f"\nmetadata:\n  namespace: {study.namespace}\n", 3)
    return _header(study) + text


def main(argv: list[str] | None = None) -> int:
    """Print one study's manifest; a bad parameter or a changed template exits 2 with why."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--study", required=True, help="the study's name (DNS-1123, <= 30)")
    parser.add_argument("--image", help="the coordinator image (default: coordinator.yaml's)")
    parser.add_argument("--namespace", help="put every object in this namespace")
    parser.add_argument("--storage", help="the store's volume size (default: coordinator.yaml's)")
    parser.add_argument("--storage-class", help="the store's StorageClass (default: the cluster's)")
    parser.add_argument("--service-type", choices=SERVICE_TYPES, help="default: LoadBalancer")
    args = parser.parse_args(argv)
    study = Study(
        args.study, args.image, args.namespace, args.storage, args.storage_class, args.service_type
    )
    try:
        sys.stdout.write(render(study))
    except (ValueError, TemplateChanged) as exc:
        print(f"render_study: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
