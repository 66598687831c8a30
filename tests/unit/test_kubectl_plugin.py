"""The kubectl plugin's verbs and flags, against the fake API (the e2e tests run it through kubectl itself)."""

from __future__ import annotations

import os
import shutil
import stat
import subprocess
from pathlib import Path
from typing import Any

import pytest

from modelrollout.cli import kubectl
from modelrollout.cli.kubectl_view import completion, row
from tests.unit.fake_kube import FakeKube


def rollout(kube: FakeKube, phase: str, **status: Any) -> None:
    kube.rollouts["ml", "churn-v9"] = {"metadata": {"name": "churn-v9", "namespace": "ml", "annotations": {}},
                                       "spec": {"targetRef": {"name": "churn"}, "task": "binary-classification"},
                                       "status": {"phase": phase, **status}}


def args(*argv: str) -> Any:
    a = kubectl._parser().parse_args(argv)
    for k in ("namespace", "context", "kubeconfig"):
        setattr(a, k, getattr(a, k, None))
    return a


def test_flags_go_before_or_after_the_verb_as_kubectl_takes_them() -> None:
    for argv in (("-n", "ml", "status", "churn-v9"), ("status", "churn-v9", "-n", "ml"),
                 ("status", "-n", "ml", "churn-v9")):
        a = args(*argv)
        assert (a.command, a.name, a.namespace) == ("status", "churn-v9", "ml"), argv
    a = args("--context", "prod", "get", "x", "--watch", "--kubeconfig", "/k")
    assert (a.context, a.kubeconfig, a.watch) == ("prod", "/k", True)
    assert args("status", "x").namespace is None  # then the context's namespace


def test_promote_ends_the_step_or_the_whole_canary_and_refuses_outside_it(capsys: pytest.CaptureFixture[str]) -> None:
    kube = FakeKube()
    rollout(kube, "Canary", canary={"step": 1, "weight": 50})
    assert kubectl.cmd_promote(kube, args("promote", "churn-v9", "-n", "ml")) == 0  # type: ignore[arg-type]
    assert kube.rollouts["ml", "churn-v9"]["metadata"]["annotations"]["modelrollout.dev/promote"] == "2"
    assert kubectl.cmd_promote(kube, args("promote", "churn-v9", "-n", "ml", "--full")) == 0  # type: ignore[arg-type]
    assert kube.rollouts["ml", "churn-v9"]["metadata"]["annotations"]["modelrollout.dev/promote"] == "full"
    rollout(kube, "AwaitingApproval")
    assert kubectl.cmd_promote(kube, args("promote", "churn-v9", "-n", "ml")) == 0  # type: ignore[arg-type]
    assert kube.rollouts["ml", "churn-v9"]["metadata"]["annotations"] == {"modelrollout.dev/approve": "true"}
    rollout(kube, "Evaluating")
    capsys.readouterr()
    assert kubectl.cmd_promote(kube, args("promote", "churn-v9", "-n", "ml")) == 1  # type: ignore[arg-type]
    assert "is Evaluating: promote acts on a rollout in its canary steps" in capsys.readouterr().err
    assert kubectl.cmd_promote(kube, args("promote", "nope", "-n", "ml")) == 1  # type: ignore[arg-type]
    assert 'modelrollouts.modelrollout.dev "nope" not found in namespace "ml"' in capsys.readouterr().err


def test_get_shows_phase_step_weight_and_the_failing_gate() -> None:
    st = {"phase": "Canary", "reason": "CanaryStep", "canary": {"step": 0, "weight": 10},
          "gates": [{"metric": "f1", "bound": "min", "threshold": 0.9, "value": 0.95, "verdict": "Pass"}]}
    assert row("r", st) == ["r", "Canary", "1", "10%", "1/1 passed", "CanaryStep"]
    st = {"phase": "RolledBack", "reason": "GatesFailed", "gates": [
        {"metric": "f1", "bound": "min", "threshold": 0.9, "value": 0.95, "verdict": "Pass"},
        {"metric": "recall_slice_gap", "bound": "max", "threshold": 0.1, "value": 0.3, "verdict": "Fail",
         "dryRun": True},  # reported, never the failing gate
        {"metric": "latency_p99_ms", "bound": "max", "threshold": 15, "value": 22.5, "verdict": "Fail"}]}
    assert row("r", st) == ["r", "RolledBack", "-", "-", "1/3 passed, failing: latency_p99_ms max 15 (value 22.5)",
                            "GatesFailed"]


def test_the_bash_completion_offers_verbs_and_the_clusters_rollouts(tmp_path: Path) -> None:
    fake = tmp_path / "kubectl"  # the cluster's answer to `kubectl get modelrollouts -o name`
    fake.write_text('#!/bin/sh\necho "$@" >> "$(dirname "$0")/asked"\necho modelrollout.modelrollout.dev/churn-v9\n')
    fake.chmod(fake.stat().st_mode | stat.S_IEXEC)
    script = completion("bash", list(kubectl.VERBS))

    def complete(*words: str) -> list[str]:
        line = f'{script}\nCOMP_WORDS=({" ".join(repr(w) for w in words)}); COMP_CWORD={len(words) - 1}\n' \
            '_kubectl_modelrollout; printf "%s\\n" "${COMPREPLY[@]}"'
        out = subprocess.run([shutil.which("bash") or "bash", "-c", line], capture_output=True, text=True,
                             env={**os.environ, "PATH": f"{tmp_path}:{os.environ['PATH']}"}, check=True)
        return out.stdout.split()
    assert complete("kubectl-modelrollout", "pro") == ["promote"]
    assert complete("kubectl-modelrollout", "-n", "ml", "status", "ch") == ["churn-v9"]
    assert "get modelrollouts -n ml -o name" in (tmp_path / "asked").read_text()
    assert complete("kubectl-modelrollout", "completion", "") == ["bash", "zsh"]
