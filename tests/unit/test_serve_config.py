"""deploy.py --serve-config: the app deploy.py runs, as a Ray Serve config that
Ray's own schema accepts, with the node environment beside it and no secret in
either file. The running-cluster proof is tests/integration/cluster/
test_serve_deploy.py."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import yaml

import llm_config
from settings import parse_settings
from support.deploy_main import deploy_main

SECRETS = {"HF_TOKEN": "hf_serveconfigsecret", "RAY_AUTH_TOKEN": "raytokenserveconfigsecret",
           "AWS_ACCESS_KEY_ID": "AKIASERVECONFIG", "AWS_SECRET_ACCESS_KEY": "awssecretserveconfig"}
SETTINGS = {"MODEL_ID": "org/model", "DEVICE": "cpu", "SERVED_MODEL_NAME": "chat", "WATCHDOG_TIMEOUT": "45",
            "LORA_ADAPTERS_PATH": "s3://adapters/chat/", "RAY_SERVE_ENABLE_HA_PROXY": "0", "RAY_API_PORT": "9123"}


def export(tmp_path: Path, **environ: str) -> tuple[dict, dict[str, str], str]:
    ran = deploy_main("--serve-config", str(tmp_path / "out"), **environ)
    assert ran.returncode == 0, ran.stderr
    text = (tmp_path / "out" / "serve-config.yaml").read_text()
    env_text = (tmp_path / "out" / "ray-node.env").read_text()
    node_env = dict(line.split("=", 1) for line in env_text.splitlines() if line and not line.startswith("#"))
    return yaml.safe_load(text), node_env, text + env_text


def test_the_applications_are_what_dry_run_resolves(tmp_path: Path) -> None:
    config, node_env, _ = export(tmp_path, **SETTINGS)
    dry = deploy_main("--dry-run", **SETTINGS)
    assert dry.returncode == 0, dry.stderr
    resolved = json.loads(dry.stdout)
    [app] = config["applications"]
    assert app["args"] == resolved["serving_args"]
    assert (app["name"], app["route_prefix"]) == (resolved["app"]["name"], resolved["app"]["route_prefix"])
    assert app["import_path"] == "ray.serve.llm:build_openai_app"
    assert config["http_options"] == resolved["http_options"] == {"host": "0.0.0.0", "port": 9123}
    # The watchdog and the transport travel too: the class in the config, the bound and switches in the nodes' env.
    assert app["args"]["llm_configs"][0]["server_cls"] == llm_config.WATCHED_SERVER_CLS
    assert node_env["WATCHDOG_TIMEOUT"] == "45" and node_env["RAY_SERVE_ENABLE_HA_PROXY"] == "0"
    assert node_env["RAY_SERVE_HTTP_PROXY_CALLBACK_IMPORT_PATH"] == "proxy_middlewares.proxy_middlewares"
    assert Path(node_env["PYTHONPATH"], "engine_watchdog.py").is_file()
    # `ray start` sends no usage report, not even the "disabled" one (docker/ray-node.sh).
    assert node_env["RAY_USAGE_STATS_ENABLED"] == "0" and node_env["RAY_USAGE_STATS_REPORT_URL"] == ""


def test_rays_schema_accepts_it_and_rejects_a_broken_one(tmp_path: Path) -> None:
    from ray.serve.schema import ServeDeploySchema

    config, _, _ = export(tmp_path, **SETTINGS)
    ServeDeploySchema.parse_obj(config)
    config["proxy_location"] = "EveryRack"
    with pytest.raises(Exception, match="proxy_location"):
        ServeDeploySchema.parse_obj(config)


def test_no_secret_is_written_and_the_header_says_where_they_come_from(tmp_path: Path) -> None:
    _, node_env, text = export(tmp_path, **SETTINGS, **SECRETS)
    for value in SECRETS.values():
        assert value not in text
    for name in ("RAY_AUTH_TOKEN", "HF_TOKEN_PATH", "AWS_SECRET_ACCESS_KEY"):
        assert name in text.split("applications:")[0] and name not in node_env


def test_bad_settings_write_nothing(tmp_path: Path) -> None:
    ran = deploy_main("--serve-config", str(tmp_path / "out"), MODEL_ID="org/model", MAX_REPLICAS="0")
    assert ran.returncode == 2 and "MAX_REPLICAS" in ran.stderr
    assert not (tmp_path / "out").exists()


def test_node_env_is_what_deploy_exports_for_its_own_ray() -> None:
    import deploy

    settings = parse_settings({"MODEL_ID": "m", "WATCHDOG_TIMEOUT": "0"})
    environ: dict[str, str] = {}
    deploy.export_for_workers(environ, settings)
    assert llm_config.node_env(settings).items() <= environ.items()


def mapping_rows() -> list[tuple[list[str], list[str], list[str], bool]]:
    """docs/outgrow-compose.md's "What maps to what": per row the variables, the
    Serve config's field names, the RayService's and Nginx's names, and whether
    ray-node.env is named."""
    from support import REPO_ROOT

    text = (REPO_ROOT / "docs" / "outgrow-compose.md").read_text()
    table = text.split("## What maps to what", 1)[1].split("| `.env`", 1)[1].split("\n\n", 1)[0]
    rows = [line.split("|")[1:4] for line in table.splitlines()[2:]]
    names = r"`\.?([A-Za-z_.\[\]0-9-]+)`"
    def fields(cell: str) -> list[str]:
        return [f for f in re.findall(names, cell) if f != "ray-node.env"]

    return [(re.findall(r"`([A-Z][A-Z0-9_]+)`", left), fields(middle), fields(right),
             "`ray-node.env`" in middle + right) for left, middle, right in rows]


def names_in(*trees: object) -> set[str]:
    """Every key and every string value in the trees."""
    found: set[str] = set()
    stack = list(trees)
    while stack:
        item = stack.pop()
        if isinstance(item, dict):
            found.update(str(k) for k in item)
            stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)
        elif isinstance(item, str):
            found.add(item)
    return found


def test_the_docs_mapping_names_real_settings_and_fields(tmp_path: Path) -> None:
    """Every variable of the table is a setting; every field it names is in a
    config or manifest emitted with the settings that turn each field on."""
    from settings import VARIABLES

    variables = {v.name for v in VARIABLES}
    everything = {**SETTINGS, "REQUEST_ROUTER": "prefix-cache", "REQUEST_ROUTER_KWARGS": '{"imbalanced_threshold": 5}',
                  "NUM_NODES": "2", "PLACEMENT_STRATEGY": "SPREAD", "RAY_AUTH_TOKEN": "t", "MODEL_SOURCE": "/models/m",
                  "DEVICE": "gpu", "ACCELERATOR_TYPE": "L4", "TENSOR_PARALLEL_SIZE": "2", "GPUS_PER_NODE": "1"}
    config, node_env, _ = export(tmp_path, **everything)
    cpu, _, _ = export(tmp_path / "cpu", **SETTINGS)
    serve_names = names_in(config, cpu)
    k8s = [yaml.safe_load_all((tmp_path / d / "out" / "rayservice.yaml").read_text()) for d in (".", "cpu")]
    k8s_names = names_in(*[list(docs) for docs in k8s])
    name = "ray-llm"  # COMPOSE_PROJECT_NAME's default, NAME in the table
    rows = mapping_rows()
    assert len(rows) >= 20
    for row_variables, serve_fields, k8s_fields, in_node_env in rows:
        assert row_variables and set(row_variables) <= variables, row_variables
        assert serve_fields or k8s_fields or in_node_env, row_variables
        if in_node_env:
            assert set(row_variables) & set(node_env), row_variables
        for field in serve_fields:
            assert field.split(".")[-1].split("[")[0] in serve_names, (field, row_variables)
        for field in k8s_fields:
            leaf = field.replace("NAME", name).split(".")[-1].split("[")[0]
            assert leaf in k8s_names or leaf in variables, (field, row_variables)
