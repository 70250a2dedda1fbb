"""The Compose settings as Kubernetes objects: a KubeRay RayService that runs
the Serve config of `deploy.py --serve-config`, and the project's Nginx as a
Deployment and a Service in front of it.

Plain data only (no Ray, no Kubernetes client): deploy.py writes it as YAML,
tests check it against Kubernetes' own schemas (kubernetes-validate).
Secrets are references to two Kubernetes Secrets made from .secrets, never
values (docs/outgrow-compose.md):

- `<name>-secrets`, one key per variable (`kubectl create secret generic
  NAME-secrets --from-env-file=.secrets`): the Ray pods take only the keys
  they use (the Hugging Face token as a file, the LoRA store's keys);
- `<name>-gateway-secrets`, the file itself under the key `secrets`
  (`--from-file=secrets=.secrets`): Nginx reads its keys from it, as in Compose.

Ray's own cluster token is KubeRay's (`authOptions: {mode: token}`): the
operator makes it and hands it to every Ray container and to itself.
"""

from __future__ import annotations

import math
import re
from typing import Any

from settings import ComposeSettings, GatewaySettings, NodeSettings, Settings, layer_values, parse_layer

# Where the image holds src/ (docker/Dockerfile: COPY src/ /app/src/).
IMAGE_SRC = "/app/src"
# Where Compose mounts .secrets (docker-compose.yml, secret ray-llm): the Ray
# pods' folder of Secret keys, Nginx's secrets file.
SECRETS_MOUNT = "/run/secrets/ray-llm"
# KubeRay's ports for the GCS and the dashboard (pods have their own
# addresses, so .env's RAY_HEAD_PORT and RAY_DASHBOARD_PORT need not apply).
GCS_PORT, DASHBOARD_PORT = 6379, 8265
# The Compose healthcheck's rhythm (docker/docker-compose.yml, x-serve-healthcheck).
PROBE_PERIOD_S, PROBE_TIMEOUT_S, PROBE_FAILURES, START_PERIOD_STEP_S = 30, 30, 3, 10
# NodeSettings variables a pod takes from .env when set: NCCL's shared settings.
# The per-node ones (VLLM_HOST_IP, interfaces, HCAs) differ by pod: VLLM_HOST_IP
# is the pod's IP, the rest stays with the cluster's network setup.
NCCL_SHARED = ("NCCL_NET_GDR_LEVEL", "NCCL_IB_TC", "NCCL_IB_SL", "NCCL_IB_TIMEOUT", "NCCL_IB_RETRY_CNT",
               "NCCL_DEBUG")


def quantity(size: str) -> str:
    """A Compose size (16g, 512m, 256k, bytes) as a Kubernetes quantity."""
    match = re.fullmatch(r"(\d+)([kKmMgG]?)", size)
    if not match:
        raise ValueError(f"not a size: {size!r}")
    number, unit = match.groups()
    return number + {"": "", "k": "Ki", "m": "Mi", "g": "Gi"}[unit.lower()]


def uses_models_dir(s: Settings) -> bool:
    """Whether a model's weights come from Compose's MODELS_DIR mount (/models)."""
    return any((m.model_source or "").startswith("/models/") for m in s.served)


def env_list(values: dict[str, str]) -> list[dict[str, Any]]:
    return [{"name": name, "value": value} for name, value in values.items()]


def ray_container(s: Settings, compose: ComposeSettings, node: dict[str, str], node_env: dict[str, str],
                  name: str, role: str) -> dict[str, Any]:
    """One Ray container (head or worker) of the serving image."""
    env = env_list({**node_env, "PYTHONPATH": IMAGE_SRC, "RAY_API_PORT": str(s.api_port)})
    env.append({"name": "VLLM_HOST_IP", "valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}}})
    env += env_list({n: node[n] for n in NCCL_SHARED if node.get(n)})
    # The Hugging Face token as a file (a plain HF_TOKEN would be copied into
    # Ray's logged runtime_env); absent from the Secret = no token.
    env.append({"name": "HF_TOKEN_PATH", "value": f"{SECRETS_MOUNT}/HF_TOKEN"})
    if any(m.lora_adapters_path.startswith("s3://") for m in s.served if m.lora_adapters_path):
        env += [{"name": key, "valueFrom": {"secretKeyRef": {"name": f"{name}-secrets", "key": key,
                                                                "optional": True}}}
                for key in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY")]
    mounts = [{"name": "dshm", "mountPath": "/dev/shm"}, {"name": "model-cache", "mountPath": "/cache"},
              {"name": "secrets", "mountPath": SECRETS_MOUNT, "readOnly": True}]
    if uses_models_dir(s):
        mounts.append({"name": "models", "mountPath": "/models", "readOnly": True})
    container: dict[str, Any] = {
        "name": f"ray-{role}",
        "image": compose.llm_cpu_image if s.device == "cpu" else compose.llm_image,
        "env": env,
        "volumeMounts": mounts,
    }
    if s.device == "gpu":
        container["resources"] = {"limits": {"nvidia.com/gpu": s.gpus_per_node}}
    if s.num_nodes > 1 and s.device == "gpu":
        # RDMA needs pinned memory (Compose: cap_add IPC_LOCK, memlock unlimited).
        container["securityContext"] = {"capabilities": {"add": ["IPC_LOCK"]}}
    if role == "head":
        container["ports"] = [{"name": "gcs-server", "containerPort": GCS_PORT},
                              {"name": "dashboard", "containerPort": DASHBOARD_PORT},
                              {"name": "serve", "containerPort": s.api_port},
                              {"name": "metrics", "containerPort": s.metrics_port}]
        # The Compose healthcheck's semantics: healthy once every model gives
        # a 1-token completion (src/healthcheck.py, src/readiness.py).
        check = {"exec": {"command": ["python", f"{IMAGE_SRC}/healthcheck.py"]}, "timeoutSeconds": PROBE_TIMEOUT_S}
        container["startupProbe"] = {**check, "periodSeconds": START_PERIOD_STEP_S,
                                     "failureThreshold": max(1, math.ceil(compose.serve_start_period
                                                                          / START_PERIOD_STEP_S))}
        container["readinessProbe"] = {**check, "periodSeconds": START_PERIOD_STEP_S,
                                       "failureThreshold": PROBE_FAILURES}
        container["livenessProbe"] = {**check, "periodSeconds": PROBE_PERIOD_S, "failureThreshold": PROBE_FAILURES}
    return container


def pod_template(s: Settings, compose: ComposeSettings, node: dict[str, str], node_env: dict[str, str],
                 name: str, role: str) -> dict[str, Any]:
    volumes: list[dict[str, Any]] = [
        {"name": "dshm", "emptyDir": {"medium": "Memory", "sizeLimit": quantity(compose.shm_size)}},
        {"name": "model-cache", "persistentVolumeClaim": {"claimName": f"{name}-model-cache"}},
        {"name": "secrets", "secret": {"secretName": f"{name}-secrets", "optional": True,
                                       "items": [{"key": "HF_TOKEN", "path": "HF_TOKEN"}]}},
    ]
    if uses_models_dir(s):
        volumes.append({"name": "models", "persistentVolumeClaim": {"claimName": f"{name}-models",
                                                                    "readOnly": True}})
    return {"spec": {"containers": [ray_container(s, compose, node, node_env, name, role)], "volumes": volumes}}


def rayservice(s: Settings, compose: ComposeSettings, node: dict[str, str], node_env: dict[str, str],
               serve_config_yaml: str, ray_version: str) -> dict[str, Any]:
    """KubeRay's RayService: serveConfigV2 is the Serve config, unchanged."""
    name = compose.compose_project_name
    start = {"dashboard-host": "0.0.0.0", "metrics-export-port": str(s.metrics_port),
             "disable-usage-stats": "true"}
    if s.device == "gpu":
        start["num-gpus"] = str(s.gpus_per_node)
    cluster: dict[str, Any] = {
        "rayVersion": ray_version,
        "authOptions": {"mode": "token"},
        "headGroupSpec": {"rayStartParams": dict(start),
                          "template": pod_template(s, compose, node, node_env, name, "head")},
    }
    if s.num_nodes > 1:
        workers = s.num_nodes - 1
        worker_start = {k: v for k, v in start.items() if k != "dashboard-host"}
        cluster["workerGroupSpecs"] = [{
            "groupName": "workers", "replicas": workers, "minReplicas": workers, "maxReplicas": workers,
            "rayStartParams": worker_start,
            "template": pod_template(s, compose, node, node_env, name, "worker")}]
    return {"apiVersion": "ray.io/v1", "kind": "RayService", "metadata": {"name": name},
            "spec": {"serveConfigV2": serve_config_yaml, "rayClusterConfig": cluster}}


def nginx(s: Settings, compose: ComposeSettings, gateway_env: dict[str, str]) -> list[dict[str, Any]]:
    """The project's Nginx image as a Deployment and a Service, rendering its
    config from the same variables as in Compose, in front of KubeRay's head
    service (it follows the active cluster through upgrades)."""
    name = compose.compose_project_name
    labels = {"app.kubernetes.io/name": f"{name}-nginx"}
    env = {**gateway_env, "NGINX_UPSTREAM_HOST": f"{name}-head-svc", "NGINX_CERTS_DIR": "/etc/nginx/certs",
           "NGINX_HTTP_PORT": str(s.nginx_http_port), "NGINX_HTTPS_PORT": str(s.nginx_https_port),
           "RAY_API_PORT": str(s.api_port), "RAY_DASHBOARD_PORT": str(DASHBOARD_PORT),
           "RAY_LLM_SECRETS_FILE": SECRETS_MOUNT}
    http_port, https_port = s.nginx_http_port, s.nginx_https_port
    container = {
        "name": "nginx",
        "image": compose.nginx_image,
        "env": env_list(env),
        "ports": [{"name": "http", "containerPort": http_port},
                  {"name": "https", "containerPort": https_port}],
        "readinessProbe": {"httpGet": {"path": "/readyz", "port": "http"}, "periodSeconds": START_PERIOD_STEP_S,
                           "timeoutSeconds": PROBE_TIMEOUT_S},
        "livenessProbe": {"httpGet": {"path": "/healthz", "port": "http"}, "periodSeconds": 15},
        "securityContext": {"readOnlyRootFilesystem": True, "allowPrivilegeEscalation": False,
                            "capabilities": {"drop": ["ALL"], "add": ["CHOWN", "SETUID", "SETGID",
                                                                      "NET_BIND_SERVICE", "DAC_READ_SEARCH"]}},
        "volumeMounts": [{"name": "secrets", "mountPath": SECRETS_MOUNT, "subPath": "secrets",
                          "readOnly": True},
                         {"name": "certs", "mountPath": "/etc/nginx/certs", "readOnly": True},
                         {"name": "conf", "mountPath": "/etc/nginx/conf.d"},
                         {"name": "tmp", "mountPath": "/tmp"}],
    }
    deployment = {
        "apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": f"{name}-nginx", "labels": labels},
        "spec": {"replicas": 1, "selector": {"matchLabels": labels}, "template": {
            "metadata": {"labels": labels},
            "spec": {"containers": [container], "volumes": [
                {"name": "secrets", "secret": {"secretName": f"{name}-gateway-secrets"}},
                {"name": "certs", "secret": {"secretName": f"{name}-tls", "optional": True}},
                {"name": "conf", "emptyDir": {"medium": "Memory", "sizeLimit": "4Mi"}},
                {"name": "tmp", "emptyDir": {"medium": "Memory",
                                             "sizeLimit": quantity(compose.nginx_tmp_size)}}]}}},
    }
    service = {"apiVersion": "v1", "kind": "Service", "metadata": {"name": f"{name}-nginx", "labels": labels},
               "spec": {"selector": labels, "ports": [
                   {"name": "http", "port": http_port, "targetPort": "http"},
                   {"name": "https", "port": https_port, "targetPort": "https"}]}}
    return [deployment, service]


def dump(objects: list[dict[str, Any]]) -> str:
    """YAML documents as a person reads them: multi-line strings (serveConfigV2)
    as literal blocks, no anchors for repeated values."""
    import yaml

    class Dumper(yaml.SafeDumper):
        def ignore_aliases(self, data: Any) -> bool:
            return True

    def text(dumper: yaml.SafeDumper, value: str) -> yaml.Node:
        return dumper.represent_scalar("tag:yaml.org,2002:str", value, style="|" if "\n" in value else None)

    Dumper.add_representer(str, text)
    return yaml.dump_all(objects, Dumper=Dumper, sort_keys=False)


def manifests(s: Settings, environ: dict[str, str], serve_config_yaml: str, node_env: dict[str, str],
              ray_version: str) -> list[dict[str, Any]]:
    """Every object, in the order `kubectl apply -f` should create them."""
    compose = parse_layer(ComposeSettings, environ)
    node = layer_values(NodeSettings, environ)
    gateway = layer_values(GatewaySettings, environ)
    return [rayservice(s, compose, node, node_env, serve_config_yaml, ray_version),
            *nginx(s, compose, gateway)]
