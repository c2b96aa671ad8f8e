"""The files under cluster/ parse and validate against the schemas their tools use."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import yaml

CLUSTER = Path(__file__).resolve().parents[2] / "cluster"
SERVE_CONFIGS = ["serve.cpu.yaml", "serve.gpu.yaml"]


def load(name: str):
    return yaml.safe_load((CLUSTER / name).read_text())


def test_every_yaml_parses():
    files = sorted(CLUSTER.rglob("*.yaml")) + sorted(CLUSTER.rglob("*.yml"))
    assert {f.name for f in files} >= {"serve.cpu.yaml", "serve.gpu.yaml", "rayservice.yaml", "ray-cluster.yaml",
                                       "prometheus.yml"}
    for f in files:
        assert isinstance(yaml.safe_load(f.read_text()), dict), f


@pytest.mark.parametrize("name", SERVE_CONFIGS)
def test_serve_configs_validate(name):
    from ray.serve.schema import ServeDeploySchema

    spec = ServeDeploySchema.model_validate(load(name))
    app = spec.applications[0]
    assert app.import_path == "serve.app:build_app"
    assert {d.name for d in app.deployments} == {"Ingress", "TextEncoder", "Sampler", "VAE"}


@pytest.mark.parametrize("name", SERVE_CONFIGS)
def test_serve_config_args_are_app_args(name):
    from serve.config import AppArgs

    AppArgs.model_validate(load(name)["applications"][0]["args"])


def test_rayservice_embeds_the_gpu_serve_config():
    from ray.serve.schema import ServeDeploySchema

    rs = load("rayservice.yaml")
    assert rs["apiVersion"] == "ray.io/v1" and rs["kind"] == "RayService"
    embedded = yaml.safe_load(rs["spec"]["serveConfigV2"])
    ServeDeploySchema.model_validate(embedded)
    assert embedded == load("serve.gpu.yaml"), "serveConfigV2 differs from cluster/serve.gpu.yaml: copy the file into it"


def test_rayservice_cluster_shape():
    cluster = load("rayservice.yaml")["spec"]["rayClusterConfig"]
    import ray

    assert cluster["rayVersion"] == ray.__version__
    head = cluster["headGroupSpec"]
    assert head["template"]["spec"]["containers"][0]["image"]
    ports = {p["name"]: p["containerPort"] for p in head["template"]["spec"]["containers"][0]["ports"]}
    assert ports["serve"] == load("serve.gpu.yaml")["http_options"]["port"]
    assert str(ports["metrics"]) == head["rayStartParams"]["metrics-export-port"]
    (gpu,) = [g for g in cluster["workerGroupSpecs"] if g["groupName"] == "gpu-workers"]
    assert 0 <= gpu["minReplicas"] <= gpu["replicas"] <= gpu["maxReplicas"]
    limits = gpu["template"]["spec"]["containers"][0]["resources"]["limits"]
    assert int(limits["nvidia.com/gpu"]) >= 1
    assert cluster["enableInTreeAutoscaling"] is True


def test_cluster_launcher_config_validates_with_rays_schema():
    import jsonschema  # noqa: F401 - a [dev] dependency; Ray's validator needs it
    from ray.autoscaler._private.util import prepare_config, validate_config

    cfg = load("ray-cluster.yaml")
    validate_config(prepare_config(cfg))  # fills the provider defaults, then Ray's JSON schema
    types = cfg["available_node_types"]
    assert cfg["head_node_type"] in types
    (gpu_type,) = [t for t, spec in types.items() if spec.get("resources", {}).get("GPU")]
    assert 0 <= types[gpu_type]["min_workers"] <= types[gpu_type]["max_workers"] <= cfg["max_workers"]
    setup = " ".join(cfg["setup_commands"])
    assert "pip install" in setup and "torch==2.13.0" in setup


def test_prometheus_config_scrapes_rays_service_discovery_file():
    prom = load("prometheus.yml")
    jobs = {j["job_name"]: j for j in prom["scrape_configs"]}
    files = [f for sd in jobs["ray"]["file_sd_configs"] for f in sd["files"]]
    assert "/tmp/ray/prom_metrics_service_discovery.json" in files


def test_dockerfile_pins_python_and_torch():
    text = (CLUSTER / "Dockerfile").read_text()
    assert re.search(r"^FROM python:3\.11", text, re.M)
    assert "ARG TORCH_VERSION=2.13.0" in text and '"torch==${TORCH_VERSION}"' in text
    # every pip install that could resolve torch names the pinned version
    for line in re.findall(r"pip install[^\n]*", text):
        assert "torch==${TORCH_VERSION}" in line, line


def test_grafana_dashboard_schema_basics():
    dash = json.loads((CLUSTER / "grafana" / "genserve.json").read_text())
    assert isinstance(dash["schemaVersion"], int) and dash["schemaVersion"] >= 30
    assert dash["title"] and dash["uid"]
    panels = dash["panels"]
    ids = [p["id"] for p in panels]
    assert len(ids) == len(set(ids)), "panel ids must be unique"
    graphs = [p for p in panels if p["type"] != "row"]
    assert len(graphs) >= 10
    for p in graphs:
        assert p["title"] and p["gridPos"]["w"] > 0 and p["gridPos"]["h"] > 0
        assert p["targets"], p["title"]
        ref_ids = [t["refId"] for t in p["targets"]]
        assert len(ref_ids) == len(set(ref_ids)), p["title"]
        for t in p["targets"]:
            assert t["expr"].count("(") == t["expr"].count(")"), t["expr"]
            assert re.search(r"\bray_[a-z0-9_]+", t["expr"]), t["expr"]
    exprs = " ".join(t["expr"] for p in graphs for t in p["targets"])
    # Ray Serve's built-ins and ours are both on the dashboard.
    for name in ("ray_serve_num_http_requests_total", "ray_serve_deployment_processing_latency_ms_bucket",
                 "ray_serve_deployment_replica_healthy", "ray_genserve_sampler_images_total", "ray_genserve_jobs_total"):
        assert name in exprs, name


if __name__ == "__main__":
    import sys

    sys.exit(pytest.main([__file__, "-v"]))
