"""deploy/kubernetes (SPEC §10, §12): the kustomize base and the example overlay render,
every object passes the Kubernetes schemas (strict, offline) and, for the Prometheus
Operator's kinds, the operator's own CRD schemas (tests/schemas/prometheus-operator), the
policy scanner checkov finds nothing it was not told why to skip, and the generated copies
of config/ have not drifted."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from functools import cache
from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate
import pytest
import yaml

from tunegate.api.drain import DRAIN_TIMEOUT_S
from tunegate.commands.cli import _parser
from tunegate.config.compiled import load_config

ROOT = Path(__file__).resolve().parent.parent
KUBE = ROOT / "deploy" / "kubernetes"
SCHEMAS = Path(__file__).resolve().parent / "schemas" / "prometheus-operator"
CHECKOV = ROOT / "deploy" / ".venv-checkov" / "bin" / "checkov"
KUBERNETES_VERSION = "1.30"  # the oldest release the manifests claim (preStop, HPA v2, PDB v1)
KINDS = {
    "ConfigMap": 2,
    "Deployment": 1,
    "HorizontalPodAutoscaler": 1,
    "NetworkPolicy": 1,
    "PodDisruptionBudget": 1,
    "PrometheusRule": 1,
    "Service": 1,
    "ServiceMonitor": 1,
}
TREES = ["", "overlays/example"]


@cache
def render(tree: str) -> str:
    kubectl = shutil.which("kubectl")
    if kubectl is None:
        pytest.skip("kubectl is not on PATH: the kustomize rendering is not checked here")
    done = subprocess.run(
        [kubectl, "kustomize", str(KUBE / tree)], capture_output=True, text=True, check=False
    )
    assert done.returncode == 0, done.stderr
    return done.stdout


def objects(tree: str) -> list[dict[str, Any]]:
    return [doc for doc in yaml.safe_load_all(render(tree)) if doc]


def crd_validator(kind: str) -> jsonschema.Draft202012Validator:
    """A validator for the operator's schema of `kind`. The schema itself is not checked
    against the JSON Schema meta-schema: its patterns are Go regexps (`^(?i)...`)."""
    schema = json.loads((SCHEMAS / f"{kind.lower()}-monitoring-v1.json").read_text())
    return jsonschema.Draft202012Validator(schema)


def one(tree: str, kind: str) -> dict[str, Any]:
    (found,) = [obj for obj in objects(tree) if obj["kind"] == kind]
    return found


@pytest.mark.parametrize("tree", TREES)
def test_renders_the_objects_spec_10_lists(tree: str) -> None:
    kinds: dict[str, int] = {}
    for obj in objects(tree):
        kinds[obj["kind"]] = kinds.get(obj["kind"], 0) + 1
        assert obj["metadata"]["namespace"] == "tunegate"
    assert kinds == KINDS


@pytest.mark.parametrize("tree", TREES)
def test_every_object_passes_its_schema(tree: str) -> None:
    for obj in objects(tree):
        if obj["apiVersion"] == "monitoring.coreos.com/v1":
            crd_validator(obj["kind"]).validate(obj)
        else:
            kubernetes_validate.validate(obj, KUBERNETES_VERSION, strict=True)


def test_a_broken_object_fails_its_schema() -> None:
    deployment = one("", "Deployment")
    deployment["spec"]["replicas"] = "three"
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(deployment, KUBERNETES_VERSION, strict=True)
    monitor = one("", "ServiceMonitor")
    monitor["spec"]["endpoints"][0]["interval"] = "often"
    with pytest.raises(jsonschema.ValidationError):
        crd_validator("ServiceMonitor").validate(monitor)


def test_the_deployment_keeps_the_contract() -> None:
    deployment = one("", "Deployment")
    spec = deployment["spec"]
    pod = spec["template"]["spec"]
    (gateway,) = pod["containers"]
    assert spec["replicas"] == 3
    assert gateway["args"][0] == "tunegate"
    _parser().parse_args(gateway["args"][1:])  # exits on an unknown command or flag
    assert gateway["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert gateway["livenessProbe"]["httpGet"]["path"] == "/healthz"
    pre_stop_s = int(gateway["lifecycle"]["preStop"]["exec"]["command"][-1])
    assert pod["terminationGracePeriodSeconds"] > pre_stop_s + DRAIN_TIMEOUT_S
    assert set(gateway["resources"]) == {"requests", "limits"}
    security = gateway["securityContext"]
    assert security["readOnlyRootFilesystem"] and security["runAsNonRoot"]
    assert not security["allowPrivilegeEscalation"]
    env = {item["name"]: item for item in gateway["env"]}
    for secret in ("REDIS_URL", "OPENAI_API_KEY"):
        assert env[secret]["valueFrom"]["secretKeyRef"]["name"] == "tunegate"
    mounts = {m["name"]: m["mountPath"] for m in gateway["volumeMounts"]}
    config_path = Path(env["TUNEGATE_CONFIG"]["value"])
    assert config_path.parent == Path(mounts["config"])
    keys = next(v for v in pod["volumes"] if v["name"] == "keys")
    assert keys["secret"]["secretName"] == "tunegate"
    config = yaml.safe_load(config_map_data()[config_path.name])
    assert Path(config["auth"]["keys_file"]).parent == Path(mounts["keys"])


def config_map_data() -> dict[str, str]:
    (config,) = [
        obj
        for obj in objects("")
        if obj["kind"] == "ConfigMap" and obj["metadata"]["name"].startswith("tunegate-config")
    ]
    data: dict[str, str] = config["data"]
    return data


def test_the_config_map_holds_a_valid_gateway_config(tmp_path: Path) -> None:
    config = yaml.safe_load(config_map_data()["gateway.yaml"])
    keys = tmp_path / "keys.yaml"
    keys.write_text(yaml.safe_dump({"keys": [{"name": "a", "sha256": "0" * 64, "tenant": "t"}]}))
    config["auth"]["keys_file"] = str(keys)
    path = tmp_path / "gateway.yaml"
    path.write_text(yaml.safe_dump(config))
    loaded = load_config(path)
    assert set(loaded.tasks) == set(
        yaml.safe_load((ROOT / "config/gateway.yaml").read_text())["tasks"]
    )
    assert [key.name for key in loaded.keys] == ["a"]


def test_rules_and_dashboard_are_those_of_config() -> None:
    rules = yaml.safe_load((ROOT / "config/prometheus/rules.yml").read_text())
    assert one("", "PrometheusRule")["spec"]["groups"] == rules["groups"]
    (dashboard,) = [obj for obj in objects("") if obj["metadata"]["name"] == "tunegate-dashboard"]
    assert dashboard["metadata"]["labels"]["grafana_dashboard"] == "1"
    shipped = json.loads((ROOT / "config/grafana/dashboards/tunegate.json").read_text())
    assert json.loads(dashboard["data"]["tunegate.json"]) == shipped


def test_generated_copies_have_not_drifted_from_config() -> None:
    done = subprocess.run(
        [sys.executable, str(KUBE / "generate.py"), "--check"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr


@pytest.mark.parametrize("tree", TREES)
def test_checkov_finds_no_unjustified_failure(tree: str, tmp_path: Path) -> None:
    if not CHECKOV.is_file():
        pytest.skip("checkov is not installed: run scripts/ensure-checkov (its own venv)")
    rendered = tmp_path / "rendered.yaml"
    rendered.write_text(render(tree))
    done = subprocess.run(
        [
            str(CHECKOV),
            "--framework",
            "kubernetes",
            "-f",
            str(rendered),
            "--skip-download",
            "--quiet",
            "--compact",
            "-o",
            "json",
        ],
        capture_output=True,
        text=True,
        check=False,
        env={"BC_SKIP_MAPPING": "TRUE", "PATH": "/usr/bin:/bin", "HOME": str(tmp_path)},
    )
    report = json.loads(done.stdout)
    assert report["summary"]["failed"] == 0, done.stdout
    assert report["summary"]["passed"] > 50
    annotations = one(tree, "Deployment")["metadata"]["annotations"]
    skips = [value for key, value in annotations.items() if key.startswith("checkov.io/skip")]
    assert report["summary"]["skipped"] == len(skips)
    for skip in skips:
        check, reason = skip.split("=", 1)
        assert check.startswith("CKV") and len(reason.split()) >= 8, skip
