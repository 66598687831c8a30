"""`kubectl modelrollout list|get|status|history|approve|promote|abort|undo|retry|report|completion`.

Installed as the console script `kubectl-modelrollout`, so kubectl finds it as a plugin.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Sequence
from typing import Any

from modelrollout.cli.kubectl_view import cmd_get, cmd_report, completion, namespace_of, rollout_of
from modelrollout.core import history
from modelrollout.core.decide import (
    ANNOTATION_ABORT,
    ANNOTATION_APPROVE,
    ANNOTATION_PROMOTE,
    ANNOTATION_RETRY,
    ANNOTATION_UNDO,
    TERMINAL,
)
from modelrollout.core.report import STATUS_CELLS, from_status, to_text
from modelrollout.kube.api import Kube


def cmd_list(kube: Kube, args: argparse.Namespace) -> int:
    items = kube.list_all_rollouts() if args.all_namespaces else kube.list_rollouts(namespace_of(args))
    rows = [["NAMESPACE", "NAME", "TARGET", "PHASE", "DECISION", "MESSAGE"]]
    for item in items:
        st = item.get("status") or {}
        rows.append([item["metadata"]["namespace"], item["metadata"]["name"], item["spec"]["targetRef"]["name"],
                     st.get("phase", "Pending"), (st.get("decision") or {}).get("result", ""),
                     (st.get("message") or "")[:80]])
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    for row in rows:
        print("  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip())
    return 0


def cmd_status(kube: Kube, args: argparse.Namespace) -> int:
    ns, r = rollout_of(kube, args)
    if r is None:
        return 1
    st = r.get("status") or {}
    print(f"{ns}/{args.name}: {st.get('phase', 'Pending')} ({st.get('reason', '')}) {st.get('message', '')}")
    print(f"target: Deployment {r['spec']['targetRef']['name']}; candidate: {r['spec'].get('candidate', {})}\n")
    if st.get("gates"):  # with the load sweep's batch x concurrency table when status has one
        print(to_text(from_status(r["spec"]["task"], st)))
    omitted = (st.get("sweep") or {}).get("cellsOmitted")
    if omitted:
        print(f"load sweep: {omitted} more cells than the {STATUS_CELLS} status keeps are not shown "
              "(Prometheus has every cell: modelrollout_sweep_*)\n")
    tracking = st.get("tracking") or {}
    if tracking.get("state") == "Tracked":
        print(f"tracking: MLflow run {tracking.get('runId')} in {tracking.get('experiment')}: {tracking.get('url')}\n")
    elif tracking.get("state") == "Failed":
        print(f"tracking: not recorded in MLflow ({tracking.get('message')}); the decision stands\n")
    for line in _canary_lines(st.get("canary") or {}):
        print(line)
    if st.get("traffic"):
        t = st["traffic"]
        print(f"traffic: HTTPRoute {t.get('httpRoute')} sends {t.get('weight')}% to Service {t.get('canaryService')}"
              f"{'' if st.get('phase') == 'Canary' else ' (put back: production weights restored)'}\n")
    for c in st.get("conditions") or []:
        print(f"condition {c['type']}={c['status']} ({c.get('reason')}) since {c.get('lastTransitionTime')}")
    return 0


def cmd_history(kube: Kube, args: argparse.Namespace) -> int:
    ns = namespace_of(args)
    entries = [(str(r["metadata"]["name"]), e) for r in kube.list_rollouts(ns)
               if (r.get("spec") or {}).get("targetRef", {}).get("name") == args.target
               for e in (r.get("status") or {}).get("history") or []]
    print("\n".join(history.render(f"Deployment {ns}/{args.target}", entries)))
    return 0


def _canary_lines(canary: dict[str, Any]) -> list[str]:
    """Each canary step with its outcome, then one line per live-gate measurement."""
    lines = []
    for record in canary.get("steps") or []:
        lines.append(f"canary step {record.get('step')} at {record.get('weight')}%: {record.get('outcome')}")
        for m in record.get("measurements") or []:
            prod = f" (production {m['productionValue']})" if m.get("productionValue") is not None else ""
            dry = " [dry run]" if m.get("dryRun") else ""
            lines.append(f"  {m.get('at')} {m.get('gate')}: {m.get('verdict')}{dry} value {m.get('value')}{prod}, "
                         f"{m.get('bound')} {m.get('threshold')}: {m.get('message')}")
    return [*lines, ""] if lines else []


def _refusal(command: str, phase: str, st: dict[str, Any]) -> str | None:
    """Why the command cannot act on a rollout in this phase, in plain words (None: it can)."""
    if command == "promote" and phase not in ("Canary", "AwaitingApproval"):
        return (f"is {phase}: promote acts on a rollout in its canary steps or awaiting approval; the gates decide "
                "before that")
    if command == "abort" and phase in TERMINAL:
        hint = "; `kubectl modelrollout undo` restores the previous template" if phase == "Promoted" else ""
        return f"is {phase}, which is final: abort changes nothing{hint}"
    if command == "undo" and phase != "Promoted":
        why = {"RolledBack": "production already runs its previous template",
               "Failed": "production was never changed"}.get(phase, "only a Promoted rollout can be undone; "
                                                                   "use abort while it is in progress")
        return f"is {phase}: {why}"
    if command == "undo" and not st.get("previousTemplate"):
        return "has no previous template in its status to restore"
    return None


def _annotate(kube: Kube, args: argparse.Namespace, annotations: dict[str, str], done: str) -> int:
    ns, r = rollout_of(kube, args)
    if r is None:
        return 1
    st = r.get("status") or {}
    refused = _refusal(args.command, str(st.get("phase") or "Pending"), st)
    if refused:
        print(f"error: modelrollout {ns}/{args.name} {refused}", file=sys.stderr)
        return 1
    kube.annotate_rollout(ns, args.name, annotations)
    print(f"modelrollout.modelrollout.dev/{args.name} {done}")
    return 0


def cmd_promote(kube: Kube, args: argparse.Namespace) -> int:
    """In AwaitingApproval: approve (and with --full skip the canary); in Canary: end this step or all."""
    _, r = rollout_of(kube, args)
    if r is None:
        return 1
    st = r.get("status") or {}
    step = int((st.get("canary") or {}).get("step", 0)) + 1
    if st.get("phase") == "AwaitingApproval":
        return _annotate(kube, args, {ANNOTATION_APPROVE: "true", **({ANNOTATION_PROMOTE: "full"} if args.full
                                                                      else {})}, "approved")
    return _annotate(kube, args, {ANNOTATION_PROMOTE: "full" if args.full else str(step)},
                     "promoted: every remaining step skipped" if args.full else f"promoted: step {step}'s pause ends")


VERBS: dict[str, tuple[str, str]] = {  # verb -> (argument, help)
    "list": ("", "rollouts with their phase and decision"),
    "get": ("name", "one rollout's phase, step, weight and gates (--watch: live until it ends)"),
    "status": ("name", "the side-by-side table and gate verdicts"),
    "history": ("target", "the recent rollouts of one Deployment, figure by figure with intervals"),
    "approve": ("name", "approve a Manual rollout"),
    "promote": ("name", "end the current canary step's pause now (--full: skip every remaining step)"),
    "abort": ("name", "abort: production goes back to exactly as before"),
    "undo": ("name", "put a Promoted rollout's target back to its previous template"),
    "retry": ("name", "start a finished rollout over"),
    "report": ("name", "write the last evaluation's report: the operator's HTML with its plots, Markdown, JSON"),
    "completion": ("shell", "print a shell completion script (bash or zsh)"),
}


def _parser() -> argparse.ArgumentParser:
    """kubectl's conventions: -n, --context and --kubeconfig before or after the verb."""
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("-n", "--namespace", default=argparse.SUPPRESS, help="the namespace (default: the context's)")
    common.add_argument("--context", default=argparse.SUPPRESS, help="the kubeconfig context to use")
    common.add_argument("--kubeconfig", default=argparse.SUPPRESS, help="path to the kubeconfig file")
    p = argparse.ArgumentParser(prog="kubectl modelrollout", description=__doc__, parents=[common])
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for verb, (arg, text) in VERBS.items():
        sp = sub.add_parser(verb, help=text, description=text, parents=[common])
        if arg == "shell":
            sp.add_argument(arg, choices=["bash", "zsh"])
        elif arg:
            sp.add_argument(arg)
        if verb == "list":
            sp.add_argument("-A", "--all-namespaces", action="store_true")
        if verb == "get":
            sp.add_argument("-w", "--watch", action="store_true")
        if verb == "promote":
            sp.add_argument("--full", action="store_true", help="skip every remaining canary step")
        if verb == "report":
            sp.add_argument("--dir", default=None, help="where to write it (default: report-<name>)")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    for k in ("namespace", "context", "kubeconfig"):
        setattr(args, k, getattr(args, k, None))
    if args.command == "completion":
        print(completion(args.shell, list(VERBS)))
        return 0
    kube = Kube(args.kubeconfig, args.context)
    commands = {"list": cmd_list, "get": cmd_get, "status": cmd_status, "history": cmd_history,
                "promote": cmd_promote, "report": cmd_report}
    if args.command in commands:
        return commands[args.command](kube, args)
    key, value, done = {
        "approve": (ANNOTATION_APPROVE, "true", "approved"),
        "abort": (ANNOTATION_ABORT, "true", "aborted"),
        "undo": (ANNOTATION_UNDO, "true", "will be undone (watch its status: the operator restores the template "
                 "only if nobody changed it since)"),
        "retry": (ANNOTATION_RETRY, str(int(time.time())), "will start over"),
    }[args.command]
    return _annotate(kube, args, {key: value}, done)


if __name__ == "__main__":
    sys.exit(main())
