"""The plugin's read-only views: `get NAME [--watch]`, `report NAME`, and shell completion."""

from __future__ import annotations

import argparse
import gzip
import sys
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from modelrollout.core.decide import TERMINAL
from modelrollout.core.report import from_status
from modelrollout.core.text import cap
from modelrollout.kube.api import Kube, NotFound, current_namespace

WATCH_EVERY = 2.0  # seconds between reads while watching


def gates_line(st: Mapping[str, Any]) -> str:
    """How many gate checks passed, and the first that blocks, by the rule of the Failing column (a check that
    failed or was inconclusive, never a dry run: it reports, it does not block)."""
    gates = st.get("gates") or []
    if not gates:
        return "-"
    verdicts = [str(g.get("verdict", "")) for g in gates]
    head = f"{verdicts.count('Pass')}/{len(gates)} passed"
    g = next((g for g in gates if g.get("verdict") in ("Fail", "Inconclusive") and not g.get("dryRun")), None)
    if g is None:
        return head
    t = g.get("threshold")
    return f"{head}, failing: {g.get('metric')} {g.get('bound')} {f'{t:g}' if isinstance(t, int | float) else t}" \
        f" (value {g.get('value')})"


def namespace_of(args: argparse.Namespace) -> str:
    return str(args.namespace) if args.namespace else current_namespace(args.kubeconfig, args.context)


def rollout_of(kube: Kube, args: argparse.Namespace) -> tuple[str, dict[str, Any] | None]:
    """The named rollout, or None after kubectl's NotFound line on stderr."""
    ns = namespace_of(args)
    r = kube.get_rollout(ns, args.name)
    if r is None:
        print(f'Error from server (NotFound): modelrollouts.modelrollout.dev "{args.name}" not found in namespace '
              f'"{ns}"', file=sys.stderr)
    return ns, r


def row(name: str, st: Mapping[str, Any]) -> list[str]:
    """NAME PHASE STEP WEIGHT GATES REASON, the live view's columns."""
    canary = st.get("canary") or {}
    step = f"{int(canary['step']) + 1}" if st.get("phase") == "Canary" and "step" in canary else "-"
    weight = st.get("weight", canary.get("weight") if st.get("phase") == "Canary" else None)
    return [name, str(st.get("phase") or "Pending"), step, "-" if weight is None else f"{weight}%", gates_line(st),
            str(st.get("reason") or "")]


HEADER = ["NAME", "PHASE", "STEP", "WEIGHT", "GATES", "REASON"]
WIDTHS = [0, 16, 4, 6, 24]  # NAME's is the name's; the last columns take what they need


def fmt(line: list[str], name_width: int) -> str:
    widths = [name_width, *WIDTHS[1:]]
    return "  ".join([*(c.ljust(w) for c, w in zip(line, widths, strict=False)), *line[len(widths):]]).rstrip()


def cmd_get(kube: Kube, args: argparse.Namespace) -> int:
    """One line; with --watch a new line each time phase, step, weight, gates or reason change, until the rollout
    ends (or Ctrl-C), as `kubectl get -w` does."""
    last: list[str] | None = None
    while True:
        _, r = rollout_of(kube, args)
        if r is None:
            return 1
        st = r.get("status") or {}
        line = row(args.name, st)
        width = max(len(args.name), len(HEADER[0]))
        if last is None:
            print(fmt(HEADER, width))
        if line != last:
            print(fmt(line, width), flush=True)
            last = line
        if not args.watch or st.get("phase") in TERMINAL:
            return 0
        try:
            time.sleep(WATCH_EVERY)
        except KeyboardInterrupt:
            return 0


def cmd_report(kube: Kube, args: argparse.Namespace) -> int:
    """The last evaluation's report as files: report.json and report.md rebuilt from status, and the HTML the
    operator stored with its plots (the <name>-report ConfigMap); without it, the HTML from status (tables
    only: status keeps figures, not predictions)."""
    from modelrollout.cli.report_files import write_report_dir

    ns, r = rollout_of(kube, args)
    if r is None:
        return 1
    st = r.get("status") or {}
    if not st.get("gates"):
        print(f"error: modelrollout {ns}/{args.name} has no evaluation in its status yet (phase "
              f"{st.get('phase', 'Pending')})", file=sys.stderr)
        return 1
    out = Path(args.dir or f"report-{args.name}")
    paths = write_report_dir(from_status(r["spec"]["task"], st), out, {})
    stored = (st.get("report") or {}).get("configMap")
    if stored:
        try:
            paths["html"].write_bytes(gzip.decompress(kube.config_map_file(ns, stored, "report.html.gz")))
            print(f"wrote {out}/index.html (the operator's, plots: {st['report'].get('plots')}), {out}/report.md "
                  f"and {out}/report.json")
            return 0
        except (NotFound, OSError, EOFError) as e:
            print(f"warning: the stored report {ns}/{stored} could not be read ({cap(str(e), 200)}); the HTML is "
                  "rebuilt from status", file=sys.stderr)
    print(f"wrote {out}/index.html, {out}/report.md and {out}/report.json (no plots: status keeps figures, "
          "not predictions)")
    return 0


def completion(shell: str, verbs_list: list[str]) -> str:
    """Verbs, flags and rollout names (from the cluster, through kubectl) for bash; zsh through bashcompinit."""
    verbs = " ".join(verbs_list)
    script = f"""_kubectl_modelrollout_names() {{ kubectl get "$1" "${{ns[@]}}" -o name 2>/dev/null | sed 's|.*/||'; }}
_kubectl_modelrollout() {{
  local cur=${{COMP_WORDS[COMP_CWORD]}} verb="" ns=() w i
  for ((i = 1; i < COMP_CWORD; i++)); do
    w=${{COMP_WORDS[i]}}
    case $w in -n|--namespace) ns=(-n "${{COMP_WORDS[i+1]}}"); ((i++));; -*) ;; *) [ -z "$verb" ] && verb=$w;; esac
  done
  if [ -z "$verb" ]; then
    COMPREPLY=($(compgen -W "{verbs} -n --namespace --context --kubeconfig" -- "$cur")); return
  fi
  case $verb in
    completion) COMPREPLY=($(compgen -W "bash zsh" -- "$cur"));;
    history) COMPREPLY=($(compgen -W "$(_kubectl_modelrollout_names deployments)" -- "$cur"));;
    list) COMPREPLY=($(compgen -W "-A --all-namespaces -n --namespace" -- "$cur"));;
    *) COMPREPLY=($(compgen -W "$(_kubectl_modelrollout_names modelrollouts) -n --watch --full --dir" -- "$cur"));;
  esac
}}
complete -F _kubectl_modelrollout kubectl-modelrollout"""
    return script if shell == "bash" else f"autoload -U +X bashcompinit && bashcompinit\n{script}"
