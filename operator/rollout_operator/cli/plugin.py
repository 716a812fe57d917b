"""`kubectl policyrollout`: watch and steer PolicyRollouts from a laptop.

Installed as the console script `kubectl-policyrollout`, which kubectl finds on $PATH, so
`kubectl policyrollout status pricing -w` works. Manual actions only set annotations
(`policy.rollouts.io/action: <verb>/<id>`, `policy.rollouts.io/train: <id>`) or, for `undo`,
`spec.policy`: the operator stays the only writer of status and applies each id once.

Exit status: 0 done, 1 a failure the message explains (missing rollout, RBAC, no CRD,
unreachable API, an action the operator refused), 2 bad usage (argparse).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from typing import Any

from rollout_operator import api
from rollout_operator.cli.session import JSON, PluginError, Session, new_id

__all__ = ["main"]

VERBS = ("list", "get", "status", "promote", "approve", "abort", "retry", "undo", "history", "lineage", "train",
         "report", "proposals")
_ACTION_VERBS = ("promote", "approve", "abort", "retry")


def _now() -> datetime:
    return datetime.now(tz=UTC)


def _console(args: argparse.Namespace) -> Any:
    from rich.console import Console

    width = getattr(args, "width", None)
    return Console(width=width, soft_wrap=False) if width else Console()


# --------------------------------------------------------------------------- read-only verbs


def _cmd_list(session: Session, args: argparse.Namespace) -> int:
    from rollout_operator.cli import live

    items = session.list(all_namespaces=args.all_namespaces)
    console = _console(args)
    if not items:
        where = "any namespace" if args.all_namespaces else f"namespace {session.namespace}"
        console.print(f"No PolicyRollouts in {where}.")
        return 0
    console.print(live.list_table(items, _now(), args.all_namespaces))
    return 0


def _cmd_get(session: Session, args: argparse.Namespace) -> int:
    from rollout_operator.cli import live

    obj = session.get(args.name)
    if args.output == "json":
        sys.stdout.write(json.dumps(obj, indent=2, sort_keys=True, default=str) + "\n")
    elif args.output == "yaml":
        import yaml

        sys.stdout.write(yaml.safe_dump(json.loads(json.dumps(obj, default=str)), sort_keys=False))
    else:
        _console(args).print(live.list_table([obj], _now(), all_namespaces=False))
    return 0


def _cmd_status(session: Session, args: argparse.Namespace) -> int:
    from rollout_operator.cli import live

    def view() -> tuple[Any, JSON]:
        obj = session.get(args.name)
        events, note = session.events(args.name)
        return live.status_view(obj, events, _now(), note), obj

    console = _console(args)
    renderable, obj = view()
    if not args.watch:
        console.print(renderable)
        return 0
    deadline = time.monotonic() + args.timeout

    def ended(obj: JSON) -> bool:
        phase = _phase_of(obj)
        if api.Phase(phase).terminal:
            return True
        if time.monotonic() >= deadline:
            raise PluginError(f"{args.name} is still {phase} after --timeout {args.timeout:g}s; "
                              f"run `kubectl policyrollout status {args.name} -w` again to keep watching")
        time.sleep(args.interval)
        return False

    if not console.is_terminal:
        # Logs and pipes get one line per change (like `kubectl rollout status`), then the final panel.
        last = ""
        while True:
            line = _one_line(obj)
            if line != last:
                console.print(line, highlight=False)
                last = line
            if ended(obj):
                break
            renderable, obj = view()
        console.print(renderable)
        return 0
    from rich.live import Live

    with Live(renderable, console=console, auto_refresh=False) as screen:
        while not ended(obj):
            renderable, obj = view()
            screen.update(renderable, refresh=True)
    return 0


def _phase_of(obj: JSON) -> str:
    return str((obj.get("status") or {}).get("phase") or "Pending")


def _one_line(obj: JSON) -> str:
    status = obj.get("status") or {}
    index, total, label = _current_step(obj)
    return (f"{obj['metadata']['name']}: {_phase_of(obj)} at step {min(index + 1, total)}/{total} ({label}), "
            f"weight {status.get('canaryWeight', 0)}%: {status.get('message') or ''}")


def _cmd_history(session: Session, args: argparse.Namespace) -> int:
    from rollout_operator.cli import live

    _console(args).print(live.history_table(session.get(args.name), _now()))
    return 0


def _cmd_lineage(session: Session, args: argparse.Namespace) -> int:
    from rollout_operator.cli import lineage

    output = lineage.render(session.get(args.name), args.revision, args.json)
    if isinstance(output, str):
        print(output)
    else:
        _console(args).print(output)
    return 0


def _cmd_proposals(session: Session, args: argparse.Namespace) -> int:
    from rollout_operator.cli import proposals

    if args.reject:
        obj = session.get(args.name)
        done = proposals.rejected(obj)
        value = ",".join([*done, *(r for r in args.reject if r not in done)])
        session.annotate(args.name, proposals.ANNOTATION_REJECTED, value)
        print(f"rejected proposals {', '.join(args.reject)} of policyrollout {args.name} (annotation "
              f"{proposals.ANNOTATION_REJECTED}; the envelope stays as it is)")
        return 0
    try:
        window_s = max(api.parse_duration(args.since).total_seconds(), 1.0)
    except ValueError as exc:
        raise PluginError(f"--since: {exc}") from None
    obj = session.get(args.name)
    spec = obj.get("spec") or {}
    since = args.since
    notes: list[str] = []
    counts = examples = None
    url = args.prometheus_url or (spec.get("analysis") or {}).get("prometheusUrl")
    if not url:
        notes.append("counts unavailable: no Prometheus URL; pass --prometheus-url")
    else:
        query = proposals.promql(args.name, session.namespace, f"{round(window_s)}s")
        try:
            counts = proposals.query_counts(url, query)
        except Exception as exc:
            notes.append(f"counts unavailable: Prometheus {url} answered {exc}; pass --prometheus-url")
    log_url = args.decision_log or (spec.get("decisionLog") or {}).get("url")
    if not log_url:
        notes.append("examples unavailable: no decision log; pass --decision-log URL")
    else:
        start = _now().timestamp() - window_s
        try:
            examples = proposals.read_examples(log_url, start, args.examples)
        except Exception as exc:
            notes.append(f"examples unavailable: decision log {log_url}: {exc}; pass --decision-log URL")
    print(proposals.render(obj, counts, examples, notes, since))
    return 0


# --------------------------------------------------------------------------- actions


def _current_step(obj: JSON) -> tuple[int, int, str]:
    from rollout_operator.cli import live

    steps = (obj.get("spec") or {}).get("steps") or []
    index = int((obj.get("status") or {}).get("currentStepIndex") or 0)
    label = live.step_label(steps[index]) if index < len(steps) else "promotion"
    return index, len(steps), label


def _intent(verb: str, obj: JSON) -> str:
    """What the operator will do with the action, in the words of the current state."""
    status = obj.get("status") or {}
    index, total, label = _current_step(obj)
    candidate = (obj.get("spec") or {}).get("policy", {}).get("version", "the candidate")
    stable = status.get("stableVersion") or "the stable policy"
    if verb == "promote":
        following = "promotion of " + candidate if index + 1 >= total else f"step {index + 2}/{total}"
        return f"step {index + 1}/{total} ({label}) completes now; the rollout moves on to {following}"
    if verb == "promote-full":
        return f"the remaining steps are skipped: {candidate} is promoted at its current weight"
    if verb == "approve":
        return f"the approval at step {index + 1}/{total} is granted; the rollout moves on"
    if verb == "abort":
        return f"the candidate {candidate} gets no more traffic: everything goes back to {stable}"
    if verb == "retry":
        return f"the rollout of {candidate} starts again from step 1, fully guarded"
    return verb


def _wait_for_action(session: Session, name: str, action_id: str, timeout: float) -> JSON:
    """Until the operator has taken the id; fail with its reason if it refused the action."""
    deadline = time.monotonic() + timeout
    while True:
        obj = session.get(name)
        status = obj.get("status") or {}
        if status.get("lastActionId") == action_id:
            events, _ = session.events(name)
            refused = [e for e in events if action_id in (e.get("message") or "")
                       and e.get("reason") in ("ActionIgnored", "InvalidAction")]
            if refused:
                raise PluginError(f"the operator refused it: {refused[-1].get('message')}")
            return obj
        if time.monotonic() >= deadline:
            raise PluginError(f"the operator has not taken action {action_id} after {timeout:g}s: "
                              "is it running? (kubectl -n policy-rollouts-system logs deploy/policy-rollouts)")
        time.sleep(0.25)


def _cmd_action(session: Session, args: argparse.Namespace) -> int:
    verb = "promote-full" if args.verb == "promote" and getattr(args, "full", False) else args.verb
    obj = session.get(args.name)
    action_id = new_id()
    session.annotate(args.name, api.ANNOTATION_ACTION, f"{verb}/{action_id}")
    print(f"{verb} requested for policyrollout {args.name} in {session.namespace} (id {action_id}): "
          f"{_intent(verb, obj)}")
    if args.wait:
        after = _wait_for_action(session, args.name, action_id, args.timeout)
        status = after.get("status") or {}
        index, total, label = _current_step(after)
        print(f"done: {args.name} is {status.get('phase')} at step {min(index + 1, total)}/{total} ({label}), "
              f"weight {status.get('canaryWeight', 0)}%")
    else:
        print(f"follow it with: kubectl policyrollout status {args.name} -n {session.namespace} -w")
    return 0


def _previous_policy(obj: JSON, version: str | None) -> tuple[JSON, str]:
    """The policy `undo` rolls out: the newest earlier revision (or the fallback, the first stable)."""
    spec, status, name = obj.get("spec") or {}, obj.get("status") or {}, obj["metadata"]["name"]
    fallback = dict(spec.get("fallback") or {})
    revisions: list[tuple[JSON, str]] = [(fallback, "the fallback, stable before any promotion")] if fallback else []
    revisions += [(r["policy"], f"promoted {r.get('promotedAt', '?')}") for r in status.get("revisions") or []]
    stable = status.get("stableVersion")
    if version is not None:
        for policy, origin in reversed(revisions):
            if policy.get("version") == version:
                return policy, origin
        known = sorted({p.get("version", "?") for p, _ in revisions})
        raise PluginError(f"version {version} is not among the previous policies of {name} "
                          f"({', '.join(known) or 'none'}); see kubectl policyrollout history {name}")
    promoted = status.get("revisions") or []
    if not promoted:
        raise PluginError(f"nothing to undo: {name} has promoted no policy yet (stable is "
                          f"{stable or 'the fallback'}); to stop a rollout in progress use "
                          f"kubectl policyrollout abort {name}")
    for policy, origin in reversed(revisions):
        if policy.get("version") != stable:
            return policy, origin
    raise PluginError(f"nothing to undo: every recorded policy of {name} is {stable}")


def _cmd_undo(session: Session, args: argparse.Namespace) -> int:
    obj = session.get(args.name)
    target, origin = _previous_policy(obj, args.to_version)
    current = (obj.get("spec") or {}).get("policy") or {}
    if current.get("version") == target.get("version"):
        phase = (obj.get("status") or {}).get("phase", "Pending")
        raise PluginError(f"spec.policy of {args.name} is already {target.get('version')} (its rollout is {phase}); "
                          f"follow it with kubectl policyrollout status {args.name} -w")
    desired = api.PolicySpec.model_validate(target).wire()
    # A merge patch keeps keys it does not mention: clear those the earlier policy did not set.
    patch: JSON = {key: None for key in current if key not in desired}
    patch.update(desired)
    session.patch(args.name, {"spec": {"policy": patch}})
    stable = (obj.get("status") or {}).get("stableVersion") or "-"
    print(f"undo: spec.policy of {args.name} is back to {target.get('version')} ({origin}); a new rollout of "
          f"{target.get('version')} replaces stable {stable}, through every step and guardrail")
    print(f"follow it with: kubectl policyrollout status {args.name} -n {session.namespace} -w")
    return 0


def _cmd_train(session: Session, args: argparse.Namespace) -> int:
    train_id = new_id()
    session.annotate(args.name, api.ANNOTATION_TRAIN, train_id)
    print(f"training requested ({train_id}) for policyrollout {args.name} in {session.namespace}; "
          f"the operator starts one training Job for this id (kubectl policyrollout history {args.name})")
    return 0


def _cmd_report(session: Session, args: argparse.Namespace) -> int:
    from rollout_operator.cli import report

    obj = session.get(args.name)
    events, _ = session.events(args.name)
    png, html = report.write(obj, events, args.out, now=_now(), prometheus_url=args.prometheus_url)
    print(f"wrote {png} and {html}")
    return 0


# --------------------------------------------------------------------------- parser


def _parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--kubeconfig", help="kubeconfig file (default: $KUBECONFIG, then ~/.kube/config)")
    common.add_argument("--context", help="kubeconfig context (default: the current context)")
    common.add_argument("-n", "--namespace", help="namespace (default: the context's namespace)")
    common.add_argument("--width", type=int, help=argparse.SUPPRESS)  # fixed width for tests and pipes

    parser = argparse.ArgumentParser(
        prog="kubectl policyrollout",
        description="Watch and steer PolicyRollouts (progressive delivery of RL policies).",
        epilog="Actions set an annotation the operator applies once; follow them with `status NAME -w`.",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    def add(name: str, help_text: str, handler: Callable[[Session, argparse.Namespace], int],
            with_name: bool = True) -> argparse.ArgumentParser:
        p = sub.add_parser(name, parents=[common], help=help_text, description=help_text)
        if with_name:
            p.add_argument("name", metavar="NAME", help="the PolicyRollout")
        p.set_defaults(handler=handler, verb=name)
        return p

    p = add("list", "list PolicyRollouts with phase, step, weight and versions", _cmd_list, with_name=False)
    p.add_argument("-A", "--all-namespaces", action="store_true", help="list in every namespace")
    p = add("get", "one PolicyRollout as a table row, or the whole object with -o", _cmd_get)
    p.add_argument("-o", "--output", choices=("table", "yaml", "json"), default="table",
                   help="table row (default), or the whole object as YAML or JSON")
    p = add("status", "steps, weight, guardrails, OPE verdict and recent events (-w: live)", _cmd_status)
    p.add_argument("-w", "--watch", action="store_true", help="redraw every --interval until the rollout ends")
    p.add_argument("--timeout", type=float, default=3600.0, help="seconds to watch at most (exit 1 when reached)")
    p.add_argument("--interval", type=float, default=1.0, help="seconds between redraws with -w (default 1)")
    for verb, help_text in (
        ("promote", "complete the current step now (--full: skip every remaining step)"),
        ("approve", "grant the approval step the rollout is waiting at"),
        ("abort", "stop the rollout: all traffic back to the stable policy"),
        ("retry", "restart a RolledBack, Aborted or Failed rollout from step 1"),
    ):
        p = add(verb, help_text, _cmd_action)
        if verb == "promote":
            p.add_argument("--full", action="store_true", help="skip all remaining steps and promote")
        p.add_argument("--wait", action="store_true", help="wait until the operator has applied the action")
        p.add_argument("--timeout", type=float, default=60.0, help="seconds --wait waits")
    p = add("undo", "roll out the previous policy version again (a new, fully guarded rollout)", _cmd_undo)
    p.add_argument("--to-version", help="a specific earlier version (default: the one before the stable)")
    add("history", "status transitions and promoted revisions", _cmd_history)
    p = add("lineage", "dataset, code, hyperparameters, environment and OPE report of each promoted revision",
            _cmd_lineage)
    p.add_argument("--revision", type=int, help="one revision (1 = the oldest kept), printed as YAML")
    p.add_argument("--json", action="store_true", help="JSON instead of a table or YAML")
    add("train", "ask the operator to start a training Job for this rollout", _cmd_train)
    p = add("report", "write timeline.png and a self-contained report.html", _cmd_report)
    p.add_argument("--out", required=True, help="directory to write into (created if missing)")
    p.add_argument("--prometheus-url", help="Prometheus to read the guardrails' series from "
                   "(default: spec.analysis.prometheusUrl; without one only last values are plotted)")
    p = add("proposals", "actions proposed outside the envelope: counts, examples, the spec change to admit them",
            _cmd_proposals)
    p.add_argument("--since", default="24h", help="window, e.g. 24h (default), 30m")
    p.add_argument("--prometheus-url", help="Prometheus with the servers' metrics "
                   "(default: spec.analysis.prometheusUrl)")
    p.add_argument("--decision-log", help="decision log URL (default: spec.decisionLog.url)")
    p.add_argument("--examples", type=int, default=3, help="examples per proposed action (default 3)")
    p.add_argument("--reject", action="append", metavar="ACTION",
                   help="record a person's rejection of a proposed action (an audited annotation)")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    session: Session | None = None
    try:
        session = Session.open(args.kubeconfig, args.context, args.namespace)
        return int(args.handler(session, args))
    except PluginError as e:
        sys.stderr.write(f"error: {e}\n")
        return 1
    except KeyboardInterrupt:
        return 130
    finally:
        if session is not None:
            session.close()


if __name__ == "__main__":
    sys.exit(main())
