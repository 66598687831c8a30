"""The Helm chart: lint, render, schema, install, least-privilege RBAC, alerts and dashboard."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import tempfile
import time
import urllib.parse
import urllib.request
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml

from modelrollout.core.engine import SystemFigures, build_report
from modelrollout.core.figures import figures_for
from modelrollout.core.quality import compare, encode
from modelrollout.core.spec import Gate
from modelrollout.core.sweep import Cell, CellFigures
from modelrollout.opmetrics import OperatorMetrics
from tests.conftest import ROOT, Cluster
from tests.e2e.conftest import Models, Operator, Prometheus, Scenario

pytestmark = pytest.mark.e2e
CHART = ROOT / "charts" / "modelrollout"
ALL_ON = ["--set", "prometheusRule.enabled=true", "--set", "grafanaDashboard.enabled=true",
          "--set", "serviceMonitor.enabled=true", "--set", "rbac.secretNamespaces={ml}"]


def helm(cluster: Cluster, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run([f"{cluster.bindir}/helm", *args], capture_output=True, text=True, env=cluster.env(),
                          check=check, timeout=300)


def render(cluster: Cluster, *args: str) -> list[dict[str, Any]]:
    out = helm(cluster, "template", "mr", str(CHART), "--namespace", "modelrollout-system",
               "--kube-version", "1.35.4", *args).stdout
    return [d for d in yaml.safe_load_all(out) if d]


def test_chart_crd_is_the_crd(cluster: Cluster) -> None:
    assert (CHART / "crds" / "modelrollouts.modelrollout.dev.yaml").read_bytes() == \
        (ROOT / "crds" / "modelrollouts.modelrollout.dev.yaml").read_bytes()


def test_lint_is_clean(cluster: Cluster) -> None:
    for extra in ([], ALL_ON):
        out = helm(cluster, "lint", "--strict", str(CHART), *extra)
        assert "0 chart(s) failed" in out.stdout and "[WARNING]" not in out.stdout and "[ERROR]" not in out.stdout


def test_renders_with_defaults_and_with_every_option(cluster: Cluster) -> None:
    kinds = sorted(d["kind"] for d in render(cluster))
    assert kinds == ["ClusterRole", "ClusterRoleBinding", "Deployment", "Service", "ServiceAccount"]
    docs = render(cluster, *ALL_ON)
    kinds = sorted(d["kind"] for d in docs)
    assert {"ServiceMonitor", "PrometheusRule", "ConfigMap", "Role", "RoleBinding"} <= set(kinds)
    dep = next(d for d in docs if d["kind"] == "Deployment")
    pod = dep["spec"]["template"]["spec"]
    c = pod["containers"][0]
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert c["securityContext"]["readOnlyRootFilesystem"] is True
    assert c["resources"]["requests"] and c["resources"]["limits"]
    assert c["livenessProbe"]["httpGet"]["path"] == "/healthz"
    cm = next(d for d in docs if d["kind"] == "ConfigMap")
    assert cm["metadata"]["labels"]["grafana_dashboard"] == "1"
    assert json.loads(cm["data"]["modelrollout.json"])["uid"] == "modelrollout"


def test_namespaced_install_grants_roles_only_in_listed_namespaces(cluster: Cluster) -> None:
    docs = render(cluster, "--set", "rbac.namespaces={ml,ml-staging}")
    roles = {d["metadata"]["namespace"]: d for d in docs if d["kind"] == "Role"}
    assert set(roles) == {"ml", "ml-staging"}
    assert any(r["resources"] == ["deployments"] for r in roles["ml"]["rules"])
    cluster_rules = next(d for d in docs if d["kind"] == "ClusterRole")["rules"]
    cluster_resources = {res for r in cluster_rules for res in r["resources"]}
    assert cluster_resources == {"customresourcedefinitions", "nodes", "pods", "namespaces"}
    metrics = next(r for r in roles["ml"]["rules"] if r["apiGroups"] == ["metrics.k8s.io"])
    assert metrics["verbs"] == ["list"]  # pod usage is listed by selector, never read by name
    assert all(set(r["verbs"]) <= {"get", "list", "watch"} for r in cluster_rules)
    args = next(d for d in docs if d["kind"] == "Deployment")["spec"]["template"]["spec"]["containers"][0]["args"]
    assert "--namespace=ml" in args and "--namespace=ml-staging" in args and "--all-namespaces" not in args
    env = {e["name"]: e["value"] for e in next(d for d in docs if d["kind"] == "Deployment")[
        "spec"]["template"]["spec"]["containers"][0]["env"]}
    assert env["MODELROLLOUT_HOLDOUT_URL_HOSTS"] == ""  # no URL hold-outs unless the admin lists hosts
    assert env["MODELROLLOUT_HOLDOUT_MEMORY_MIB"] == "384"


def test_the_standard_values_render_and_the_chart_works_as_a_subchart(cluster: Cluster, tmp_path: Path) -> None:
    docs = render(cluster, "--set", "additionalLabels.release=kube-prometheus-stack", "--set", "podLabels.team=ml",
                  "--set", "podAnnotations.a=b", "--set", "priorityClassName=platform", "--set", "nameOverride=mr-op",
                  "--set", "fullnameOverride=ml-rollouts", "--set-json", 'imagePullSecrets=[{"name": "registry"}]',
                  "--set-json", 'affinity={"nodeAffinity": {}}', "--set", "serviceMonitor.enabled=true",
                  "--set", "prometheusRule.enabled=true")
    assert all(d["metadata"]["labels"]["release"] == "kube-prometheus-stack" for d in docs), docs
    dep = next(d for d in docs if d["kind"] == "Deployment")
    assert dep["metadata"]["name"] == "ml-rollouts" and dep["metadata"]["labels"]["app.kubernetes.io/name"] == "mr-op"
    pod = dep["spec"]["template"]
    assert pod["metadata"]["labels"]["team"] == "ml" and pod["metadata"]["annotations"] == {"a": "b"}
    assert (pod["spec"]["priorityClassName"], pod["spec"]["imagePullSecrets"]) == ("platform", [{"name": "registry"}])
    assert pod["spec"]["containers"][0]["image"] == "ghcr.io/modelrollout/modelrollout:" + yaml.safe_load(
        (CHART / "Chart.yaml").read_text())["appVersion"]  # the tag defaults to the chart's appVersion
    # an umbrella chart with this one as a dependency, global values and all
    umbrella = tmp_path / "platform"
    (umbrella / "charts").mkdir(parents=True)
    (umbrella / "Chart.yaml").write_text(yaml.safe_dump({
        "apiVersion": "v2", "name": "platform", "version": "1.0.0",
        "dependencies": [{"name": "modelrollout", "version": "0.1.0", "repository": f"file://{CHART}"}]}))
    (umbrella / "values.yaml").write_text(yaml.safe_dump({"global": {"imageRegistry": "registry.internal"},
                                                          "modelrollout": {"podLabels": {"team": "platform"}}}))
    helm(cluster, "dependency", "build", str(umbrella))
    out = helm(cluster, "template", "p", str(umbrella), "--namespace", "platform", "--kube-version", "1.35.4")
    sub = next(d for d in yaml.safe_load_all(out.stdout) if d and d["kind"] == "Deployment")
    assert sub["spec"]["template"]["metadata"]["labels"]["team"] == "platform"


@pytest.mark.parametrize(("setting", "words"), [
    ("replicas=3", "replicas"), ("operator.maxConcurrentEvaluations=0", "maxConcurrentEvaluations"),
    ("alerts.stuckFor=soon", "stuckFor"), ("colour=blue", "colour"), ("podLabels.team=null", "podLabels"),
])
def test_schema_rejects_bad_values_clearly(cluster: Cluster, setting: str, words: str) -> None:
    out = helm(cluster, "template", "mr", str(CHART), "--kube-version", "1.35.4", "--set", setting, check=False)
    assert out.returncode != 0 and "values don't meet the specifications of the schema" in out.stderr
    assert words in out.stderr, out.stderr


def test_dockerfile_is_hadolint_clean() -> None:
    out = subprocess.run([str(Path(sys.executable).parent / "hadolint"), str(ROOT / "Dockerfile")],
                         capture_output=True, text=True)
    assert out.returncode == 0, out.stdout + out.stderr


# --- alerts -------------------------------------------------------------------------

def rules_file(cluster: Cluster, tmp: Path, stuck_for: str = "30m") -> Path:
    docs = render(cluster, "--set", "prometheusRule.enabled=true", "--set", f"alerts.stuckFor={stuck_for}")
    rule = next(d for d in docs if d["kind"] == "PrometheusRule")
    path = tmp / "rules.yaml"
    path.write_text(yaml.safe_dump(rule["spec"]))
    return path


ALERT_TESTS = Path(__file__).with_name("alerts_test.yaml")


def test_alert_rules_check_and_unit_tests(cluster: Cluster, tmp_path: Path) -> None:
    rules = rules_file(cluster, tmp_path)
    check = subprocess.run(["promtool", "check", "rules", str(rules)], capture_output=True, text=True)
    assert check.returncode == 0, check.stdout + check.stderr
    assert "SUCCESS: 5 rules found" in check.stdout
    (tmp_path / "tests.yaml").write_text(ALERT_TESTS.read_text())
    out = subprocess.run(["promtool", "test", "rules", "tests.yaml"], capture_output=True, text=True, cwd=tmp_path)
    assert out.returncode == 0, out.stdout + out.stderr


# --- dashboard ----------------------------------------------------------------------

def dashboard_exprs() -> list[str]:
    d = json.loads((CHART / "files" / "dashboard.json").read_text())
    exprs = [t["expr"] for p in d["panels"] for t in p.get("targets", [])]
    exprs += [v["query"] if isinstance(v["query"], str) else v["query"]["query"]
              for v in d["templating"]["list"] if v.get("type") == "query"]
    return exprs


def test_dashboard_is_built_by_the_sdk_and_unchanged() -> None:
    out = subprocess.run([sys.executable, str(ROOT / "hack" / "dashboard.py")], capture_output=True, text=True,
                         check=True)
    assert out.stdout == (CHART / "files" / "dashboard.json").read_text()


def exported_names() -> set[str]:
    """Every metric name the operator exports, once it has observed a report with every figure."""
    from prometheus_client import CollectorRegistry

    reg = CollectorRegistry()
    m = OperatorMetrics(reg)
    everything = {f: 1.0 for t in ("binary-classification", "regression") for f in figures_for(t)}  # type: ignore[arg-type]
    cells = {Cell(1, 1): CellFigures(Cell(1, 1), 10, 1, 1.0, {"p99": 5.0})}  # the load sweep's series
    y = np.array([0, 1] * 20)
    quality = compare(encode("binary-classification", y, y, None), encode("binary-classification", y, 1 - y, None),
                      resamples=0, slices={"region": ["eu", "us"] * 20}, min_group_rows=1)  # the per-group series
    rep = build_report("binary-classification", [Gate.model_validate({"metric": "f1", "min": 0})], quality,
                       candidate_system=SystemFigures(everything, {}, cells=cells),
                       baseline_system=SystemFigures(everything, {}, cells=cells),
                       data_quality={"rows": 40, "columns": 3, "missing": {"a": 0}, "duplicateRows": 0})
    slo = {"sloMs": 50.0, "batchSize": 8, "rateRps": 10.0, "byBatchSize": {"1": 5.0, "8": 80.0}}  # where it was found
    rep = replace(rep, details={**rep.details, "candidate": {**(rep.details.get("candidate") or {}), "sloSearch": slo}})
    m.figures.observe(rep, "r", "ns")
    m.set_phase("r", "ns", "Pending")
    m.decisions.labels("ns", "Promoted").inc()
    m.eval_errors.labels("ns").inc()
    m.canary("r", "ns", 1, [{"gate": "g", "value": 1.0, "productionValue": 0.5, "threshold": 2.0, "bound": "max",
                             "verdict": "Pass"}])
    return {s.name for fam in reg.collect() for s in fam.samples}


def test_every_dashboard_query_parses_and_names_an_exported_metric(prometheus: Prometheus) -> None:
    names = exported_names()
    prometheus.configure([])
    for expr in dashboard_exprs():
        if expr.startswith("label_values("):
            metric = re.search(r"label_values\((\w+)", expr).group(1)  # type: ignore[union-attr]
            assert metric in names, metric
            continue
        concrete = expr.replace("$namespace", ".*").replace("$rollout", ".*")
        url = prometheus.url + "/api/v1/query?" + urllib.parse.urlencode({"query": concrete})
        with urllib.request.urlopen(url) as r:
            assert json.loads(r.read())["status"] == "success", expr
        for pattern in re.findall(r'__name__=~"([^"]+)"', expr):  # a family of series: each alternative exported
            for alt in pattern.split("|"):
                assert any(re.fullmatch(alt, n) for n in names), f"no exported metric matches {alt} (in {expr})"
        for metric in re.findall(r"\b(modelrollout_\w+)", re.sub(r'__name__=~"[^"]+"', "", expr)):
            assert metric in names, f"{metric} (in {expr}) is not exported by the operator"


# --- install, RBAC, and the operator under the chart's ServiceAccount ---------------

@pytest.fixture(scope="module")
def installed(cluster: Cluster, operator: Operator) -> str:
    """The chart installed (the operator fixture has made a node its pod can land on)."""
    out = helm(cluster, "upgrade", "--install", "mr", str(CHART), "--namespace", "modelrollout-system",
               "--create-namespace", "--wait", "--timeout", "120s", check=False)
    assert out.returncode == 0, out.stderr
    return "system:serviceaccount:modelrollout-system:mr"


def test_helm_install_succeeds(cluster: Cluster, installed: str) -> None:
    out = helm(cluster, "status", "mr", "--namespace", "modelrollout-system")
    assert "STATUS: deployed" in out.stdout
    notes = helm(cluster, "get", "notes", "mr", "--namespace", "modelrollout-system").stdout
    for line in ("kubectl -n modelrollout-system rollout status deployment/mr", "kubectl get modelrollouts -A --watch",
                 "kubectl modelrollout status <name> -n <namespace>", "kubectl apply --server-side -f"):
        assert line in notes, notes
    dep = json.loads(cluster.kubectl("-n", "modelrollout-system", "get", "deployment", "mr", "-o", "json").stdout)
    assert dep["status"].get("availableReplicas") == 1


@pytest.mark.parametrize(("verb", "resource", "allowed"), [
    ("patch", "deployments.apps", True), ("get", "configmaps", True), ("create", "configmaps", True),
    ("list", "nodes", True),
    ("patch", "modelrollouts.modelrollout.dev/status", True),
    ("get", "secrets", False), ("list", "secrets", False), ("delete", "configmaps", False),
    ("create", "namespaces", False), ("delete", "nodes", False), ("get", "namespaces", True),
    ("list", "deployments.apps", False), ("watch", "deployments.apps", False), ("patch", "events", False),
    ("create", "clusterroles.rbac.authorization.k8s.io", False),
    ("patch", "httproutes.gateway.networking.k8s.io", True), ("delete", "httproutes.gateway.networking.k8s.io", False),
])
def test_least_privilege(cluster: Cluster, installed: str, verb: str, resource: str, allowed: bool) -> None:
    out = cluster.kubectl("auth", "can-i", verb, resource, "-n", "default", f"--as={installed}", check=False)
    assert out.stdout.strip() == ("yes" if allowed else "no"), (verb, resource, out.stdout)


def sa_kubeconfig(cluster: Cluster, tmp: Path) -> Path:
    token = cluster.kubectl("-n", "modelrollout-system", "create", "token", "mr", "--duration=1h").stdout.strip()
    admin = yaml.safe_load(Path(cluster.kubeconfig).read_text())
    cfg = {"apiVersion": "v1", "kind": "Config", "clusters": admin["clusters"], "current-context": "sa",
           "users": [{"name": "sa", "user": {"token": token}}],
           "contexts": [{"name": "sa", "context": {"cluster": admin["clusters"][0]["name"], "user": "sa"}}]}
    path = tmp / "sa.kubeconfig"
    path.write_text(yaml.safe_dump(cfg))
    return path


def test_operator_under_the_chart_service_account_promotes(cluster: Cluster, installed: str, scenario: Scenario,
                                                          models: Models, tmp_path: Path) -> None:
    kc = sa_kubeconfig(cluster, tmp_path)
    denied = subprocess.run([f"{cluster.bindir}/kubectl", "--kubeconfig", str(kc), "get", "secrets", "-n", "default"],
                            capture_output=True, text=True)
    assert denied.returncode != 0 and "Forbidden" in denied.stderr
    op = scenario.op
    admin_env = op.env
    op.stop()  # the session operator runs as admin; run one as the chart's ServiceAccount instead
    try:
        op.start({"KUBECONFIG": str(kc), "MODELROLLOUT_SERVICE_ADDRESSES_FILE": str(op.addresses),
                  "MODELROLLOUT_METRICS_PORT": str(op.metrics_port), "MODELROLLOUT_RECONCILE_INTERVAL": "1"},
                 all_namespaces=True)
        before = scenario.template()
        scenario.rollout("rbac", op.serve(models.good), op.serve(models.production),
                         [{"metric": "f1", "min": 0.9}, {"metric": "replicas_fit", "min": 1}])
        st = scenario.wait_phase("rbac", {"Promoted", "RolledBack", "Failed"})
        assert st["phase"] == "Promoted", st.get("message")
        assert scenario.template() != before
        scenario.assert_invariant("rbac", before)
        log = (op.log.read_text() if op.log else "")
        assert "Forbidden" not in log.split("rbac", 1)[-1]
    finally:
        op.stop()
        op.start(admin_env)


def test_rolled_back_alert_fires_in_a_real_prometheus(cluster: Cluster, scenario: Scenario, models: Models,
                                                      prometheus: Prometheus, tmp_path: Path) -> None:
    rules = rules_file(cluster, tmp_path).read_text()
    prometheus.configure([f"127.0.0.1:{scenario.op.metrics_port}"], rules=rules)
    scenario.rollout("alerted", scenario.op.serve(models.bad), scenario.op.serve(models.production),
                     [{"metric": "f1", "min": 0.9}])
    assert scenario.wait_phase("alerted", {"RolledBack", "Promoted", "Failed"})["phase"] == "RolledBack"
    import time
    end = time.monotonic() + 60
    firing: list[dict[str, Any]] = []
    while time.monotonic() < end and not firing:
        with urllib.request.urlopen(prometheus.url + "/api/v1/alerts") as r:
            alerts = json.loads(r.read())["data"]["alerts"]
        firing = [a for a in alerts if a["labels"]["alertname"] == "ModelRolloutRolledBack"
                  and a["labels"].get("namespace") == scenario.ns and a["state"] == "firing"]
        time.sleep(1)
    assert firing, "ModelRolloutRolledBack never fired"
    gate = [a for a in alerts if a["labels"]["alertname"] == "ModelRolloutGateFailing"
            and a["labels"].get("rollout") == "alerted"]
    assert gate and gate[0]["labels"]["metric"] == "f1"


def test_kubectl_plugin(cluster: Cluster, scenario: Scenario, models: Models) -> None:
    plugin = Path(sys.executable).parent / "kubectl-modelrollout"
    env = {**cluster.env(), "PATH": f"{plugin.parent}:{cluster.env()['PATH']}"}

    def kubectl(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([f"{cluster.bindir}/kubectl", "modelrollout", "-n", scenario.ns, *args],
                              capture_output=True, text=True, env=env, timeout=60)

    before = scenario.template()
    scenario.rollout("plug", scenario.op.serve(models.good), scenario.op.serve(models.production),
                     [{"metric": "f1", "min": 0.9}, {"metric": "f1", "maxDrop": 0.05}],
                     promotion={"approval": "Manual"})
    scenario.wait_phase("plug", {"AwaitingApproval"})
    out = kubectl("list")
    assert out.returncode == 0 and "plug" in out.stdout and "AwaitingApproval" in out.stdout
    out = subprocess.run([f"{cluster.bindir}/kubectl", "modelrollout", "get", "plug", "-n", scenario.ns],
                         capture_output=True, text=True, env=env, timeout=60)  # -n after the verb, as kubectl takes it
    assert out.returncode == 0 and re.search(r"^plug\s+AwaitingApproval\s+-\s+0%\s+2/2 passed", out.stdout, re.M), out
    out = kubectl("status", "plug")
    assert out.returncode == 0, out.stderr
    row = r"^f1\s+0\.9\d+\s+0\.9\d+\s+\+0\.\d+\s+\[0\.\d+, 0\.\d+\]\s+min 0\.9000\s+Pass"
    assert re.search(row, out.stdout, re.M), out.stdout
    # the operator stored the evaluation's HTML report, plots included, in a ConfigMap the rollout owns
    end = time.monotonic() + 60
    while not (stored := scenario.status("plug").get("report")) and time.monotonic() < end:
        time.sleep(0.5)
    assert stored and stored["configMap"] == "plug-report" and stored["plots"] == "all", stored
    cm = json.loads(scenario.cluster.kubectl("-n", scenario.ns, "get", "configmap", "plug-report", "-o", "json").stdout)
    uid = scenario.get("modelrollout", "plug")["metadata"]["uid"]
    assert [r["uid"] for r in cm["metadata"]["ownerReferences"]] == [uid] and len(cm["binaryData"]) == 1
    with tempfile.TemporaryDirectory() as tmp:
        out = kubectl("report", "plug", "--dir", tmp)
        assert out.returncode == 0 and "the operator's, plots: all" in out.stdout, out.stdout + out.stderr
        page = (Path(tmp) / "index.html").read_text()
        assert page.count("data:image/png;base64,") >= 2 and "<h2>Confusion matrices</h2>" in page
        assert "<h2>ROC and precision-recall curves</h2>" in page and (Path(tmp) / "report.json").exists()
    assert kubectl("approve", "plug").returncode == 0
    assert scenario.wait_phase("plug", {"Promoted", "RolledBack"})["phase"] == "Promoted"
    promoted = scenario.template()
    assert promoted != before
    out = kubectl("abort", "plug")  # said plainly, not "aborted"
    assert out.returncode == 1 and "is Promoted, which is final: abort changes nothing" in out.stderr, out.stderr
    # undo refuses while someone else changed the target since, then restores the exact template
    k = scenario.cluster.kubectl
    k("-n", scenario.ns, "patch", "deployment", "churn", "--type=merge", "-p",
      '{"spec":{"template":{"metadata":{"annotations":{"someone":"else"}}}}}')
    assert kubectl("undo", "plug").returncode == 0
    end = time.monotonic() + 60
    while (st := scenario.status("plug")).get("reason") != "UndoRefused" and time.monotonic() < end:
        time.sleep(0.5)
    assert st["phase"] == "Promoted" and "changed after this rollout promoted it" in st["message"], st
    k("-n", scenario.ns, "patch", "deployment", "churn", "--type=json", "-p",
      '[{"op":"remove","path":"/spec/template/metadata/annotations/someone"}]')
    st = scenario.wait_phase("plug", {"RolledBack"}, timeout=60)
    assert st["reason"] == "Undone" and scenario.template() == before, st
    out = kubectl("undo", "plug")
    assert out.returncode == 1 and "already runs its previous template" in out.stderr
    assert kubectl("retry", "plug").returncode == 0
    scenario.wait_phase("plug", {"AwaitingApproval", "Staging", "Evaluating"})
    assert kubectl("abort", "plug").returncode == 0
    st = scenario.wait_phase("plug", {"RolledBack"})
    assert st["reason"] == "Aborted"
    assert kubectl("status", "nope").returncode == 1
    # both attempts stay in status.history, newest first: the undo replaced its own attempt's entry
    hist = scenario.status("plug").get("history") or []
    assert [(h["result"], h["reason"]) for h in hist] == [("RolledBack", "Aborted"), ("RolledBack", "Undone")], hist
    first = hist[1]
    assert first["attempt"] == "" and hist[0]["attempt"] != "" and first["outcome"] == "Promote"
    assert len(first["holdoutSha256"]) == 64 and re.fullmatch(r"[0-9a-f]{32}", first["mlflowRunId"]), first
    assert first["candidateImage"] == "registry.example/churn:8"
    f1 = next(f for f in first["figures"] if f["name"] == "f1")
    assert f1["low"] <= f1["candidate"] <= f1["high"] and f1["deltaLow"] <= f1["candidate"] - f1["baseline"]
    out = kubectl("history", "churn")
    assert out.returncode == 0, out.stderr
    assert re.search(r"^plug\s+1\s+-\s+\S+\s+RolledBack\s+Undone\s+registry\.example/churn:8\s+[0-9a-f]{12}",
                     out.stdout, re.M), out.stdout
    assert re.search(r"^plug\s+1\s+-\s+0\.9\d*\s\[0\.\d+, [01]\.?\d*\]\s+0\.\d+\s+[+-]0\.\d+ \[", out.stdout,
                     re.M), out.stdout
