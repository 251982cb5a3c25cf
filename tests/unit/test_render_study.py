"""deploy/k8s/render_study.py, one coordinator per study: the rendered manifest is
deploy/k8s/coordinator.yaml with every name and selector made the study's, and nothing else
changed; two studies (or a study and coordinator.yaml) never share an object. `make lint-deploy`
validates rendered studies against the Kubernetes schemas; these tests check their structure.
The script is stdlib-only and not a package, so it is loaded from its path, and the manifests are
read with regular expressions over the template's known layout (PyYAML is no dependency)."""

from __future__ import annotations

import importlib.util
import re
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

pytestmark = pytest.mark.unit

K8S = Path(__file__).resolve().parents[2] / "deploy" / "k8s"
BASE = (K8S / "coordinator.yaml").read_text()


def _module() -> ModuleType:
    spec = importlib.util.spec_from_file_location("concordia_render_study", K8S / "render_study.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses resolve the module's annotations through it
    spec.loader.exec_module(module)
    return module


RS = _module()


def _render(name: str, **options: Any) -> str:
    text: str = RS.render(RS.Study(name, **options))
    return text


def _documents(text: str) -> list[str]:
    return text[text.index("apiVersion:") :].split("\n---\n")


def _labels(flow: str) -> dict[str, str]:
    """`{a: b, c: d}` as a dict (the template writes labels as one-line flow mappings)."""
    pairs = [item.split(": ", 1) for item in flow.strip("{} ").split(", ")]
    return {key: value for key, value in pairs}


def _objects(text: str) -> set[tuple[str, str]]:
    """(kind, name) of every object the manifest creates or names: its Services and
    StatefulSet, the StatefulSet's pod and volume claim, and the Secrets it mounts."""
    found = set()
    for doc in _documents(text):
        kind = re.search(r"^kind: (\S+)$", doc, re.M)
        name = re.search(r"^  name: (\S+)$", doc, re.M)
        assert kind is not None and name is not None
        found.add((kind[1], name[1]))
        if kind[1] == "StatefulSet":
            claims = re.findall(r"^    - metadata:\n        name: (\S+)$", doc, re.M)
            found |= {("PersistentVolumeClaim", f"{c}-{name[1]}-0") for c in claims}
            found.add(("Pod", f"{name[1]}-0"))
        found |= {("Secret", s) for s in re.findall(r"secretName: ([^,}\s]+)", doc)}
    return found


def _statefulset(text: str) -> str:
    (doc,) = [d for d in _documents(text) if re.search(r"^kind: StatefulSet$", d, re.M)]
    return doc


def test_a_study_is_the_coordinator_manifest_with_its_own_names() -> None:
    text = _render("cardiology")
    kinds = [re.search(r"^kind: (\S+)$", d, re.M)[1] for d in _documents(text)]  # type: ignore[index]
    assert kinds == ["Service", "Service", "StatefulSet"]
    assert _objects(text) == {
        ("Service", "concordia-study-cardiology"),
        ("Service", "concordia-headless-cardiology"),
        ("StatefulSet", "concordia-study-cardiology"),
        ("Pod", "concordia-study-cardiology-0"),
        ("PersistentVolumeClaim", "state-concordia-study-cardiology-0"),
        ("Secret", "concordia-kit-cardiology"),
        ("Secret", "concordia-probe-kit-cardiology"),
    }
    sts = _statefulset(text)
    assert re.findall(r"^  replicas: (\S+)", sts, re.M) == ["1"]  # one process, one store writer
    assert "serviceName: concordia-headless-cardiology\n" in sts
    assert "  volumeClaimTemplates:\n" in sts and "{name: state, mountPath: /state}" in sts
    # the header tells the operator which Secrets to create, from which kits
    header = text[: text.index("apiVersion:")]
    assert "create secret generic concordia-kit-cardiology" in header
    assert "--from-file=kits/cardiology/coordinator/" in header
    assert "create secret generic concordia-probe-kit-cardiology" in header


def test_only_names_and_labels_differ_from_the_coordinator_manifest() -> None:
    """Image, security context, probes, resources and volumes are coordinator.yaml's own: with
    default options every line that differs is a name or a label line."""
    rendered = _render("cardiology").splitlines()
    rendered = rendered[next(i for i, line in enumerate(rendered) if line == "apiVersion: v1") :]
    base = BASE[BASE.index("apiVersion:") :].splitlines()
    assert len(rendered) == len(base)
    changed = [(b, r) for b, r in zip(base, rendered, strict=True) if b != r]
    assert len(changed) == 13  # 3 object names, serviceName, 2 secretNames, 4 labels, 3 selectors
    for before, after in changed:
        assert "concordia-coordinator" in before or "concordia-health-probe-kit" in before
        assert "cardiology" in after


def test_selectors_pick_the_studys_pod_only() -> None:
    studies = {name: _render(name) for name in ("cardiology", "dialysis")}
    pods = {}
    selectors = {}
    for name, text in studies.items():
        sts = _statefulset(text)
        pod = re.search(r"^    metadata:\n      labels: (\{.*\})$", sts, re.M)
        assert pod is not None
        pods[name] = _labels(pod[1])
        found = re.findall(r"(?:selector|matchLabels): (\{.*\})$", text, re.M)
        assert len(found) == 3  # two Services and the StatefulSet
        selectors[name] = [_labels(s) for s in found]
    base_selectors = [_labels(s) for s in re.findall(r"selector: (\{.*\})$", BASE, re.M)]
    for name, pod_labels in pods.items():
        for other, chosen in selectors.items():
            for selector in chosen:
                selects = selector.items() <= pod_labels.items()
                assert selects == (name == other), (name, other, selector)
        for selector in base_selectors:  # coordinator.yaml in the same namespace never picks it
            assert not selector.items() <= pod_labels.items()


def test_two_studies_and_the_coordinator_manifest_share_no_object() -> None:
    base = _objects(BASE)
    first, second = _objects(_render("cardiology")), _objects(_render("dialysis"))
    assert not first & second and not first & base and not second & base


names = st.from_regex(RS.STUDY_PATTERN, fullmatch=True)
# the words the renderer adds to names, so that one study's name may be another's plus one
WORDS = st.sampled_from(["study", "headless", "kit", "probe", "probe-kit", "state", "0", "x"])


@st.composite
def related_names(draw: st.DrawFn) -> tuple[str, str]:
    """Two study names, often one the other with a prefix or suffix the renderer also uses."""
    a = draw(names)[:20].rstrip("-")
    word = draw(WORDS)
    b = draw(st.one_of(names, st.just(f"{a}-{word}"), st.just(f"{word}-{a}")))
    if not RS.STUDY_PATTERN.fullmatch(b):  # "0-…" does not start with a letter
        b = f"{a}-{word}"
    return a, b


@settings(max_examples=60, deadline=None)
@given(related_names())
def test_any_two_study_names_give_disjoint_valid_names(pair: tuple[str, str]) -> None:
    """No two distinct studies collide, however their names relate (one may be the other with
    a suffix such as "-headless"), and every name fits Kubernetes' limits."""
    a, b = pair
    first = _objects(_render(a))
    for kind, name in first:
        assert len(name) <= 63 and re.fullmatch(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?", name), name
        if kind == "StatefulSet":  # its pods carry "<name>-<10-char revision hash>" as a label
            assert len(name) <= 52
    if a != b:
        assert not first & _objects(_render(b))


def test_options_set_namespace_image_storage_and_service_type() -> None:
    text = _render(
        "dialysis",
        namespace="renal",
        image="registry.example.org/concordia/coordinator:0.2.0",
        storage="20Gi",
        storage_class="fast-ssd",
        service_type="ClusterIP",
    )
    for doc in _documents(text):
        assert re.search(r"^metadata:\n  namespace: renal\n  name: ", doc, re.M), doc[:80]
    sts = _statefulset(text)
    assert re.findall(r"image: (\S+)", sts) == ["registry.example.org/concordia/coordinator:0.2.0"]
    assert "requests: {storage: 20Gi}" in sts and "storageClassName: fast-ssd\n" in sts
    assert re.findall(r"^  type: (\S+)$", text, re.M) == ["ClusterIP"]
    assert "kubectl --namespace renal create secret generic concordia-kit-dialysis" in text


@pytest.mark.parametrize(
    ("options", "cause"),
    [
        ({"name": "Cardiology"}, "--study"),
        ({"name": "-x"}, "--study"),
        ({"name": "x-"}, "--study"),
        ({"name": "a" * 31}, "--study"),
        ({"name": ""}, "--study"),
        ({"name": "x", "namespace": "Renal"}, "--namespace"),
        ({"name": "x", "image": "a b"}, "--image"),
        ({"name": "x", "storage": "lots"}, "--storage"),
        ({"name": "x", "storage_class": "Fast_SSD"}, "--storage-class"),
        ({"name": "x", "service_type": "Ingress"}, "--service-type"),
    ],
)
def test_bad_parameters_are_refused_naming_the_option(options: dict[str, str], cause: str) -> None:
    with pytest.raises(ValueError, match=re.escape(cause)):
        RS.render(RS.Study(**options))


def test_a_changed_template_is_refused_rather_than_half_renamed() -> None:
    template = BASE.replace("secretName: concordia-health-probe-kit,", "secretName: probe,")
    with pytest.raises(RS.TemplateChanged, match="concordia-health-probe-kit"):
        RS.render(RS.Study("x"), template)
    with pytest.raises(RS.TemplateChanged, match="occurrence"):
        RS.render(RS.Study("x"), BASE + BASE[BASE.index("apiVersion:") :])


def test_the_command_prints_the_manifest_or_says_what_is_wrong(
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert RS.main(["--study", "cardiology", "--storage", "10Gi"]) == 0
    assert capsys.readouterr().out == _render("cardiology", storage="10Gi")
    assert RS.main(["--study", "Cardiology"]) == 2
    captured = capsys.readouterr()
    assert captured.out == "" and "--study 'Cardiology'" in captured.err
