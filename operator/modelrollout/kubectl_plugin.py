"""`kubectl modelrollout list|status|approve|abort|retry`: rollouts from the terminal.

Installed as the console script `kubectl-modelrollout`, so kubectl finds it as a plugin.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Sequence

from modelrollout.core.decide import ANNOTATION_ABORT, ANNOTATION_APPROVE, ANNOTATION_RETRY
from modelrollout.core.report import from_status, to_text
from modelrollout.kube.api import Kube, current_namespace


def _namespace(args: argparse.Namespace) -> str:
    return str(args.namespace) if args.namespace else current_namespace(args.kubeconfig)


def cmd_list(kube: Kube, args: argparse.Namespace) -> int:
    items = kube.list_all_rollouts() if args.all_namespaces else kube.list_rollouts(_namespace(args))
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
    ns = _namespace(args)
    r = kube.get_rollout(ns, args.name)
    if r is None:
        print(f"error: modelrollout {ns}/{args.name} not found", file=sys.stderr)
        return 1
    st = r.get("status") or {}
    print(f"{ns}/{args.name}: {st.get('phase', 'Pending')} ({st.get('reason', '')}) {st.get('message', '')}")
    print(f"target: Deployment {r['spec']['targetRef']['name']}; candidate: {r['spec'].get('candidate', {})}\n")
    if st.get("gates"):
        print(to_text(from_status(r["spec"]["task"], st)))
    for c in st.get("conditions") or []:
        print(f"condition {c['type']}={c['status']} ({c.get('reason')}) since {c.get('lastTransitionTime')}")
    return 0


def _annotate(kube: Kube, args: argparse.Namespace, key: str, value: str, done: str) -> int:
    ns = _namespace(args)
    if kube.get_rollout(ns, args.name) is None:
        print(f"error: modelrollout {ns}/{args.name} not found", file=sys.stderr)
        return 1
    kube.annotate_rollout(ns, args.name, {key: value})
    print(f"modelrollout {ns}/{args.name} {done}")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="kubectl modelrollout", description=__doc__)
    p.add_argument("-n", "--namespace")
    p.add_argument("--kubeconfig")
    sub = p.add_subparsers(dest="command", required=True)
    ls = sub.add_parser("list", help="rollouts with their phase and decision")
    ls.add_argument("-A", "--all-namespaces", action="store_true")
    for name, text in (("status", "the side-by-side table and gate verdicts"), ("approve", "approve a Manual rollout"),
                       ("abort", "abort: production goes back to exactly as before"),
                       ("retry", "start a finished rollout over")):
        sp = sub.add_parser(name, help=text)
        sp.add_argument("name")
    args = p.parse_args(argv)
    kube = Kube(args.kubeconfig)
    if args.command == "list":
        return cmd_list(kube, args)
    if args.command == "status":
        return cmd_status(kube, args)
    key, value, done = {
        "approve": (ANNOTATION_APPROVE, "true", "approved"),
        "abort": (ANNOTATION_ABORT, "true", "aborted"),
        "retry": (ANNOTATION_RETRY, str(int(time.time())), "will start over"),
    }[args.command]
    return _annotate(kube, args, key, value, done)


if __name__ == "__main__":
    sys.exit(main())
