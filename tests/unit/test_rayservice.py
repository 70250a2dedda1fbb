"""deploy.py --serve-config's rayservice.yaml: a KubeRay RayService whose
serveConfigV2 is the emitted Serve config, and the project's Nginx as a
Deployment and a Service. Kubernetes' own schemas (kubernetes-validate, from
PyPI, strict: unknown fields fail) check the Deployment, the Service and both
Ray pod templates; KubeRay's CRD is not available here (plan.md, risks)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

import rayservice
from support import REPO_ROOT
from support.deploy_main import deploy_main

SECRETS = {"HF_TOKEN": "hf_rayservicesecret", "RAY_AUTH_TOKEN": "raytokenrayservice",
           "AWS_ACCESS_KEY_ID": "AKIARAYSERVICE", "AWS_SECRET_ACCESS_KEY": "awssecretrayservice"}
GPU_CLUSTER = {"MODEL_ID": "org/big", "MODEL_SOURCE": "/models/big", "DEVICE": "gpu", "NUM_NODES": "2",
               "GPUS_PER_NODE": "4", "TENSOR_PARALLEL_SIZE": "8", "NCCL_IB_TC": "106", "NCCL_SOCKET_IFNAME": "ens1",
               "LORA_ADAPTERS_PATH": "s3://adapters/big/", "COMPOSE_PROJECT_NAME": "llm-prod",
               "LLM_IMAGE": "registry.example/ray-llm-serve:1.0", "NGINX_IMAGE": "registry.example/ray-llm-nginx:1.0",
               "NGINX_KEY_RATE_LIMIT": "10r/s", "SERVE_START_PERIOD": "30m", "SHM_SIZE": "16g"}
VALIDATE = Path(sys.executable).parent / "kubernetes-validate"


def export(tmp_path: Path, **environ: str) -> tuple[list[dict[str, Any]], str, str]:
    ran = deploy_main("--serve-config", str(tmp_path / "out"), **environ)
    assert ran.returncode == 0, ran.stderr
    text = (tmp_path / "out" / "rayservice.yaml").read_text()
    return list(yaml.safe_load_all(text)), text, (tmp_path / "out" / "serve-config.yaml").read_text()


def kubernetes_validate(tmp_path: Path, objects: list[dict[str, Any]]) -> subprocess.CompletedProcess[str]:
    path = tmp_path / "objects.yaml"
    path.write_text(yaml.safe_dump_all(objects))
    return subprocess.run([str(VALIDATE), "--strict", "--quiet", str(path)], text=True, capture_output=True,
                          timeout=120, check=False)


def pod_templates(service: dict[str, Any]) -> list[dict[str, Any]]:
    """The Ray pods as Kubernetes' own PodTemplate objects."""
    cluster = service["spec"]["rayClusterConfig"]
    groups = [cluster["headGroupSpec"], *cluster.get("workerGroupSpecs", [])]
    return [{"apiVersion": "v1", "kind": "PodTemplate", "metadata": {"name": f"group-{i}"},
             "template": group["template"]} for i, group in enumerate(groups)]


@pytest.mark.parametrize("environ", [GPU_CLUSTER, {"MODEL_ID": "org/small", "DEVICE": "cpu"}], ids=["gpu", "cpu"])
def test_kubernetes_own_schemas_accept_every_object(tmp_path: Path, environ: dict[str, str]) -> None:
    objects, _, _ = export(tmp_path, **environ, **SECRETS)
    assert [o["kind"] for o in objects] == ["RayService", "Deployment", "Service"]
    checked = kubernetes_validate(tmp_path, [*pod_templates(objects[0]), *objects[1:]])
    assert checked.returncode == 0, checked.stdout + checked.stderr


def test_the_validator_is_real(tmp_path: Path) -> None:
    objects, _, _ = export(tmp_path, **GPU_CLUSTER, RAY_AUTH_TOKEN="t")
    [head, *_] = pod_templates(objects[0])
    head["template"]["spec"]["containers"][0]["livenesProbe"] = {}
    refused = kubernetes_validate(tmp_path, [head])
    assert refused.returncode != 0 and "livenesProbe" in refused.stdout + refused.stderr


def test_the_rayservice_carries_the_serve_config_and_the_cluster_shape(tmp_path: Path) -> None:
    objects, _, serve_text = export(tmp_path, **GPU_CLUSTER, RAY_AUTH_TOKEN="t")
    service = objects[0]
    assert service["apiVersion"] == "ray.io/v1" and service["metadata"]["name"] == "llm-prod"
    assert yaml.safe_load(service["spec"]["serveConfigV2"]) == yaml.safe_load(serve_text)
    cluster = service["spec"]["rayClusterConfig"]
    import ray

    assert cluster["rayVersion"] == ray.__version__ and cluster["authOptions"] == {"mode": "token"}
    [workers] = cluster["workerGroupSpecs"]
    assert workers["replicas"] == workers["minReplicas"] == workers["maxReplicas"] == 1
    for group in (cluster["headGroupSpec"], workers):
        assert group["rayStartParams"]["num-gpus"] == "4"
        spec = group["template"]["spec"]
        [container] = spec["containers"]
        assert container["image"] == "registry.example/ray-llm-serve:1.0"
        assert container["resources"] == {"limits": {"nvidia.com/gpu": 4}}
        assert container["securityContext"] == {"capabilities": {"add": ["IPC_LOCK"]}}
        env = {e["name"]: e for e in container["env"]}
        assert env["PYTHONPATH"]["value"] == rayservice.IMAGE_SRC and env["WATCHDOG_TIMEOUT"]["value"] == "30"
        assert env["NCCL_IB_TC"]["value"] == "106" and "NCCL_SOCKET_IFNAME" not in env
        assert env["RAY_USAGE_STATS_ENABLED"]["value"] == "0" and env["RAY_USAGE_STATS_REPORT_URL"]["value"] == ""
        assert env["VLLM_HOST_IP"]["valueFrom"] == {"fieldRef": {"fieldPath": "status.podIP"}}
        assert env["AWS_SECRET_ACCESS_KEY"]["valueFrom"]["secretKeyRef"]["name"] == "llm-prod-secrets"
        volumes = {v["name"]: v for v in spec["volumes"]}
        assert volumes["dshm"]["emptyDir"] == {"medium": "Memory", "sizeLimit": "16Gi"}
        assert volumes["models"]["persistentVolumeClaim"] == {"claimName": "llm-prod-models", "readOnly": True}
    head = cluster["headGroupSpec"]["template"]["spec"]["containers"][0]
    # The Compose healthcheck's semantics and rhythm: 30 min to start, then 3 failures.
    assert head["startupProbe"]["exec"]["command"] == ["python", "/app/src/healthcheck.py"]
    assert head["startupProbe"]["failureThreshold"] * head["startupProbe"]["periodSeconds"] == 30 * 60
    assert head["livenessProbe"]["failureThreshold"] == 3
    assert (REPO_ROOT / "src" / "healthcheck.py").is_file()
    assert "COPY --chown=root:root src/ /app/src/" in (REPO_ROOT / "docker" / "Dockerfile").read_text()


def test_nginx_renders_from_the_same_settings_and_reads_the_secrets_file(tmp_path: Path) -> None:
    objects, _, _ = export(tmp_path, **GPU_CLUSTER, RAY_AUTH_TOKEN="t")
    deployment, service = objects[1], objects[2]
    [container] = deployment["spec"]["template"]["spec"]["containers"]
    env = {e["name"]: e["value"] for e in container["env"]}
    assert container["image"] == "registry.example/ray-llm-nginx:1.0"
    assert env["NGINX_UPSTREAM_HOST"] == "llm-prod-head-svc" and env["NGINX_KEY_RATE_LIMIT"] == "10r/s"
    assert env["RAY_API_PORT"] == "8000" and env["RAY_LLM_SECRETS_FILE"] == "/run/secrets/ray-llm"
    assert not {"OPENAI_API_KEY", "NGINX_DASHBOARD_PASSWORD"} & set(env)
    assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
    volumes = {v["name"]: v for v in deployment["spec"]["template"]["spec"]["volumes"]}
    assert volumes["secrets"]["secret"]["secretName"] == "llm-prod-gateway-secrets"
    assert service["spec"]["selector"] == deployment["spec"]["selector"]["matchLabels"]


def test_no_secret_value_is_written(tmp_path: Path) -> None:
    _, text, _ = export(tmp_path, **GPU_CLUSTER, **SECRETS)
    for value in SECRETS.values():
        assert value not in text


def test_bad_compose_settings_write_nothing(tmp_path: Path) -> None:
    ran = deploy_main("--serve-config", str(tmp_path / "out"), MODEL_ID="org/m", SHM_SIZE="lots")
    assert ran.returncode == 2 and "SHM_SIZE" in ran.stderr, ran.stderr
    assert not (tmp_path / "out").exists()
