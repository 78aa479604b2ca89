"""The deployment files stay consistent with the code: they parse, run commands `dlm` has, set only
settings DLM knows, probe routes the app serves, and seed files DLM accepts."""

import re
import tomllib
from pathlib import Path
from typing import Any

import msgspec
import pytest
import yaml
from click.testing import CliRunner

from dlm.cli import main
from dlm.config import Settings
from dlm.storage.seed import LocationEntry, StorageEntry, load_entries

ROOT = Path(__file__).parent.parent
SETTINGS = {f"DLM_{field.name.upper()}" for field in msgspec.structs.fields(Settings)}


def _dlm_env(environment: Any) -> dict[str, str]:
    if isinstance(environment, dict):
        pairs = environment.items()
    else:
        pairs = [(entry["name"], entry.get("value", "")) for entry in environment]
    return {name: value for name, value in pairs if name.startswith("DLM_")}


def _runs(args: list[str]) -> None:
    """`dlm <args> --help` works: the command exists as written."""
    result = CliRunner().invoke(main, [*args, "--help"])
    assert result.exit_code == 0, (args, result.output)


def test_the_dockerfile_runs_dlm_serve_as_a_non_root_user() -> None:
    dockerfile = (ROOT / "Dockerfile").read_text()
    assert re.search(r"^USER dlm$", dockerfile, re.M)
    assert 'ENTRYPOINT ["dlm"]' in dockerfile and 'CMD ["serve"]' in dockerfile
    port = re.search(r"DLM_PORT=(\d+)", dockerfile)
    assert port and f"EXPOSE {port[1]}" in dockerfile
    assert "/health/live" in dockerfile
    for name in re.findall(r"\b(DLM_[A-Z_]+)=", dockerfile):
        assert name in SETTINGS, name
    assert "DLM_ADMIN_TOKEN" in dockerfile, "the image says how to run it with authentication"


def test_compose_starts_postgres_minio_and_a_seeded_dlm() -> None:
    compose = yaml.safe_load((ROOT / "compose.yaml").read_text())
    services = compose["services"]
    assert {"postgres", "minio", "minio-bucket", "migrate", "dlm"} <= set(services)
    _runs(services["migrate"]["command"])
    _runs(services["dlm"]["command"])
    assert services["dlm"]["depends_on"]["migrate"]["condition"] == "service_completed_successfully"
    environment = _dlm_env(services["dlm"]["environment"])
    assert set(environment) <= SETTINGS, set(environment) - SETTINGS
    mounts = dict(volume.split(":")[:2][::-1] for volume in services["dlm"]["volumes"] if volume.startswith("./"))
    for variable, model in (("DLM_LOCATION_CONFIG", LocationEntry), ("DLM_STORAGE_CONFIG", StorageEntry)):
        source = ROOT / mounts[environment[variable]]
        key = "locations" if model is LocationEntry else "storages"
        assert load_entries(str(source), key, model), source
    storages = {
        entry.storage_name: entry
        for entry in load_entries(str(ROOT / "deploy/compose/storages.toml"), "storages", StorageEntry)
    }
    bucket_command = " ".join(services["minio-bucket"]["command"])
    assert f"local/{storages['archive'].root_directory}" in bucket_command, (
        "the bucket the archive storage uses is made"
    )
    assert storages["archive"].config["access_key_id"] == services["minio"]["environment"]["MINIO_ROOT_USER"]
    assert environment["DLM_ADMIN_TOKEN"].startswith("${DLM_ADMIN_TOKEN:?"), "compose will not start DLM open"
    assert all(port.startswith("127.0.0.1:") for port in services["minio"]["ports"]), "MinIO is not published"


def test_kubernetes_manifests_probe_real_routes_and_run_real_commands(tmp_path: Path) -> None:
    from dlm.app import create_app

    documents = {
        path.name: list(yaml.safe_load_all(path.read_text())) for path in (ROOT / "deploy/kubernetes").glob("*.yaml")
    }
    kustomization = documents.pop("kustomization.yaml")[0]
    examples = {name: documents.pop(name) for name in list(documents) if name.endswith(".example.yaml")}
    assert sorted(kustomization["resources"]) == sorted(documents), "every manifest but the examples is applied"
    app = create_app(Settings(database_url="postgresql://unused@127.0.0.1/unused"))
    routes = {route.path for route in app.routes}
    [deployment] = documents["deployment.yaml"]
    [container] = deployment["spec"]["template"]["spec"]["containers"]
    _runs(container["args"])
    for probe in ("livenessProbe", "readinessProbe"):
        assert container[probe]["httpGet"]["path"] in routes, probe
    environment = _dlm_env(container["env"])
    assert set(environment) <= SETTINGS, set(environment) - SETTINGS
    [admin_token] = [entry for entry in container["env"] if entry["name"] == "DLM_ADMIN_TOKEN"]
    secrets = {document["metadata"]["name"]: document for document in examples["secret.example.yaml"]}
    for name in ("DLM_ADMIN_TOKEN", "DLM_SECRET_KEY", "DLM_DATABASE_URL"):
        [entry] = [entry for entry in container["env"] if entry["name"] == name]
        reference = entry["valueFrom"]["secretKeyRef"]
        assert reference["key"] in secrets[reference["name"]]["stringData"], f"{name} comes from a Secret"
    placeholder = secrets[admin_token["valueFrom"]["secretKeyRef"]["name"]]["stringData"]["token"]
    with pytest.raises(ValueError, match="placeholder"):
        Settings(admin_token=placeholder)
    pod = deployment["spec"]["template"]["spec"]
    for spec in (pod, documents["migrate-job.yaml"][0]["spec"]["template"]["spec"]):
        assert spec["securityContext"]["runAsNonRoot"] and spec["securityContext"]["seccompProfile"]
        for each in spec["containers"]:
            hardened = each["securityContext"]
            assert hardened["allowPrivilegeEscalation"] is False and hardened["readOnlyRootFilesystem"] is True
            assert hardened["capabilities"]["drop"] == ["ALL"]
            assert {"requests", "limits"} <= set(each["resources"]), "resources are declared"
    [ingress] = documents["ingress.yaml"]
    [rule] = ingress["spec"]["rules"]
    [service] = documents["service.yaml"]
    assert rule["http"]["paths"][0]["backend"]["service"]["name"] == service["metadata"]["name"]
    assert rule["host"] in environment["DLM_ALLOWED_HOSTS"].split(","), "DLM answers to the Ingress's host"
    [claim] = documents["pvc.yaml"]
    assert claim["spec"]["accessModes"] == ["ReadWriteMany"] or deployment["spec"]["replicas"] == 1, (
        "replicas must share one volume for the POSIX storage"
    )
    volumes = {volume["name"]: volume for volume in deployment["spec"]["template"]["spec"]["volumes"]}
    assert "emptyDir" not in volumes["data"], "a per-pod emptyDir loses the storage's bytes on restart"
    [image] = kustomization["images"]
    version = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]
    assert image["newTag"] == version, "the image tag is pinned to this DLM's version"
    [job] = documents["migrate-job.yaml"]
    assert job["metadata"]["name"].endswith(version.replace(".", "-")), "one upgrade Job per version"
    [upgrade] = job["spec"]["template"]["spec"]["containers"]
    _runs(upgrade["args"])
    assert upgrade["args"] == ["db", "upgrade"]
    [configmap] = documents["configmap.yaml"]
    for name, model, key in (
        ("locations.toml", LocationEntry, "locations"),
        ("storages.toml", StorageEntry, "storages"),
    ):
        path = ROOT / "build" / name
        path.parent.mkdir(exist_ok=True)
        path.write_text(configmap["data"][name])
        assert load_entries(str(path), key, model)
