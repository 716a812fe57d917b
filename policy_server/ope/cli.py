"""`policy-server ope`: judge a candidate artifact on the decision log, from the command line or a Job.

    policy-server ope --logs URL --policy ARTIFACT --baseline ARTIFACT|logged [--estimators snips,dr] [--json]
                      [--bound bernstein --reward-range 0,1] [--write-result /dev/termination-log]
                      [--reward-window 1h] [--reward-function first] [--default-reward X | --exclude-unrewarded]
    policy-server ope --trajectories --gamma G --logs URL --policy ARTIFACT [--estimators pdis,wpdis,dr,fqe]
                      [--agreement-tolerance X] [--min-effective-trajectories N] [--constraint cost=NAME,max=B]

This module parses the arguments and prints the result; the evaluation itself is library code:
`ope.logged` reads the log's rewarded, served, discrete decisions (joined by `policy_server.join`) and
`ope.evaluate` computes the candidate's (and the baseline artifact's) probabilities, the estimates,
intervals and verdict. With `--trajectories` the log is read as episodes (`policy_server.join.trajectories`)
and judged by `ope.trajectory_gate` (PDIS, WPDIS, DR, FQE; bootstrap by trajectory); `--bound`,
`--weight-band` and `--min-ess` are the bandit gate's and are not used there (`--reward-range` feeds the
HCOPE bound reported beside PDIS).

The result JSON is compact (`evaluate.RESULT_LIMIT` bytes at most) because the operator reads it
back from the Job's termination message. Exit codes: 0 when a verdict was reached (pass, fail or
refuse: the verdict is in the result), 2 when the inputs cannot be evaluated (the message and
the result's `error` say why).
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from policy_server.join import cli as join_cli
from policy_server.join import window as join_window
from policy_server.ope import constraints, evaluate, fairness, logged
from policy_server.ope._checks import OPEError, OPEInputError

__all__ = ["add_parser", "main", "run"]


def add_parser(sub: Any) -> argparse.ArgumentParser:
    p = sub.add_parser("ope", help="off-policy evaluation of a candidate artifact on the decision log")
    p.add_argument("--logs", required=True, help="decision log URL (directory with decisions/ and rewards/)")
    p.add_argument("--policy", help="candidate artifact directory or fsspec URL (required unless --critic-calibration)")
    p.add_argument(
        "--critic-calibration",
        action="store_true",
        help="compare the logged predicted values (q_values artifacts) with the realised returns, discounted by "
        "--gamma (default 0: the decision's own reward); needs no --policy",
    )
    p.add_argument("--baseline", default="logged", help="baseline artifact, or 'logged' for the logged rewards")
    p.add_argument("--estimators", default=None,
                   help=f"comma-separated, from {','.join(evaluate.ESTIMATORS)} (default snips,dr); "
                        "with --trajectories from pdis,wpdis,dr,fqe (default all four)")
    p.add_argument("--trajectories", action="store_true",
                   help="evaluate the log's episodes (context.episode_id/step) with trajectory estimators")
    p.add_argument("--gamma", type=float, default=None, help="discount of the return, in [0, 1] (--trajectories)")
    p.add_argument("--agreement-tolerance", type=float, default=0.2,
                   help="refuse when max - min of the estimates exceeds this times the largest |estimate| (relative; "
                        "inf disables; --trajectories)")
    p.add_argument("--min-effective-trajectories", type=float, default=30.0,
                   help="refuse when the Kish ESS of the trajectory weights is below this (--trajectories)")
    p.add_argument("--confidence", type=float, default=0.95)
    p.add_argument("--bound", choices=["bernstein", "student_t", "bootstrap", "bootstrap_t"], default="bernstein",
                   help="lower bound; bernstein holds on any data within the reward range, the others are "
                        "approximate and undercover with heavy importance weights (docs/ope.md)")
    p.add_argument("--reward-range", default=None, metavar="LO,HI",
                   help="a priori range of one reward, for the Bernstein bound (default: the logged min and max)")
    join_cli.add_reward_args(p, window_flag="--reward-window", window_default=None)
    p.add_argument("--min-ess", type=float, default=100.0)
    p.add_argument("--max-unsupported-mass", type=float, default=0.01)
    p.add_argument("--support-floor", type=float, default=0.01,
                   help="actions the logging policy takes with probability below this x 1/K count as unsupported")
    p.add_argument("--weight-band", type=float, default=0.1,
                   help="refuse when the mean importance weight is clearly outside 1 +- this (0 disables)")
    p.add_argument("--constraint", action="append", default=[], metavar="cost=NAME,max=B",
                   help="a budget on a cost posted with the rewards (repeatable): cost=NAME and max=B (absolute) or "
                        "maxIncrease=B (over the baseline); optional estimators=snips+dr, confidence=0.9")
    fairness.add_args(p)
    p.add_argument("--min-lower-bound-ratio", type=float, default=None)
    p.add_argument("--min-lower-bound-delta", type=float, default=None)
    p.add_argument("--device", default="cpu", help="cpu or cuda[:N] for the models' forward passes")
    p.add_argument("--batch-size", type=int, default=65536)
    p.add_argument("--resamples", type=int, default=None,
                   help="bootstrap resamples for the intervals (default 500; 200 with --trajectories)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", action="store_true", help="print the result as JSON")
    p.add_argument("--write-result", default=None, metavar="PATH",
                   help="also write the compact JSON result here (a Job's /dev/termination-log)")
    return p


def _pair(text: str | None) -> tuple[float, float] | None:
    if text is None:
        return None
    try:
        lo, hi = (float(v) for v in text.split(","))
    except ValueError:
        raise OPEError(f"--reward-range must be LO,HI (two numbers, e.g. 0,1), got {text!r}") from None
    return lo, hi


def dataset_options(args: argparse.Namespace) -> join_window.JoinOptions:
    """The reward join that builds the dataset (`--reward-window`, `--reward-function`, default or exclusion)."""
    try:
        return join_cli.options_from_args(args, args.reward_window)
    except join_window.JoinError as exc:
        raise OPEError(str(exc)) from None


def _estimators(text: str | None, default: str) -> list[str]:
    return [e.strip() for e in (text or default).split(",") if e.strip()]


def run_trajectories(args: argparse.Namespace) -> dict[str, Any]:
    """`--trajectories`: the episodes of the log judged by the trajectory gate."""
    from policy_server.join import trajectories
    from policy_server.ope import trajectory_gate

    if args.gamma is None:
        raise OPEError("--trajectories needs --gamma, the discount of the return (e.g. --gamma 0.99)")
    budgets = [constraints.parse_constraint(text) for text in args.constraint]
    try:
        options = join_cli.trajectory_options(args, args.reward_window)
        traj = trajectories.load_trajectories(args.logs, options)
    except join_window.JoinError as exc:
        raise OPEError(str(exc)) from None
    except (OSError, ValueError) as exc:  # TrajectoryError is a ValueError with its own one-line fix
        raise OPEError(str(exc) if isinstance(exc, trajectories.TrajectoryError) else
                       f"cannot read the decision log at {args.logs!r}: {exc}") from None
    flat = traj.observations.reshape(traj.n * traj.horizon, -1)

    def probabilities(url: str) -> tuple[Any, str]:
        dist, version = evaluate.policy_probabilities(url, flat, device=args.device, batch_size=args.batch_size)
        return dist.reshape(traj.n, traj.horizon, -1), version

    candidate, version = probabilities(args.policy)
    baseline, baseline_version = probabilities(args.baseline) if args.baseline != "logged" else (None, None)
    settings = trajectory_gate.GateSettings(
        gamma=args.gamma, estimators=_estimators(args.estimators, "pdis,wpdis,dr,fqe"), confidence=args.confidence,
        agreement_tolerance=args.agreement_tolerance, min_effective_trajectories=args.min_effective_trajectories,
        support_floor=args.support_floor, max_unsupported_mass=args.max_unsupported_mass,
        min_lower_bound_ratio=args.min_lower_bound_ratio, min_lower_bound_delta=args.min_lower_bound_delta,
        n_resamples=args.resamples or 200, seed=args.seed, reward_range=_pair(args.reward_range),
    )
    try:
        result = trajectory_gate.evaluate_trajectories(traj, candidate, settings, baseline=baseline,
                                                       constraints=budgets)
    except OPEInputError as exc:
        raise OPEError(str(exc)) from exc
    result["candidate"] = version
    if baseline_version is not None:
        result["baselineVersion"] = baseline_version
    return result


def run_critic_calibration(args: argparse.Namespace) -> dict[str, Any]:
    """`--critic-calibration`: the served critic's predictions against the returns that followed (ope/critic.py)."""
    from policy_server.join import trajectories
    from policy_server.ope import critic

    try:
        options = join_cli.trajectory_options(args, args.reward_window)
        table, terminal_ids = trajectories.load_tables(args.logs, options)
    except join_window.JoinError as exc:
        raise OPEError(str(exc)) from None
    except (OSError, ValueError) as exc:
        raise OPEError(f"cannot read the decision log at {args.logs!r}: {exc}") from None
    return critic.critic_calibration(table, terminal_ids, 0.0 if args.gamma is None else args.gamma)


def run(args: argparse.Namespace) -> dict[str, Any]:
    if args.critic_calibration:
        return run_critic_calibration(args)
    if args.policy is None:
        raise OPEError("give the candidate artifact with --policy (or --critic-calibration, which needs none)")
    if args.min_lower_bound_ratio is not None and args.min_lower_bound_delta is not None:
        raise OPEError("give at most one of --min-lower-bound-ratio and --min-lower-bound-delta")
    fair = fairness.criterion_from_args(args)
    if args.trajectories:
        if fair is not None:
            raise OPEError("the fairness criterion (--fairness-group-key) judges single decisions; "
                           "drop it or --trajectories")
        return run_trajectories(args)
    budgets = [constraints.parse_constraint(text) for text in args.constraint]
    data = logged.load_logged(args.logs, options=dataset_options(args), with_contexts=fair is not None)
    candidate, version = evaluate.policy_probabilities(args.policy, data.observations, device=args.device,
                                                       batch_size=args.batch_size)
    baseline = None
    baseline_version = None
    if args.baseline != "logged":
        baseline, baseline_version = evaluate.policy_probabilities(args.baseline, data.observations,
                                                                   device=args.device, batch_size=args.batch_size)
    try:
        result = evaluate.evaluate(
            data, candidate, baseline=baseline, estimators=_estimators(args.estimators, "snips,dr"),
            confidence=args.confidence, bound=args.bound, min_ess=args.min_ess,
            max_unsupported_mass=args.max_unsupported_mass, min_lower_bound_ratio=args.min_lower_bound_ratio,
            min_lower_bound_delta=args.min_lower_bound_delta, n_resamples=args.resamples or 500, seed=args.seed,
            support_floor=args.support_floor, weight_band=args.weight_band or None,
            rewards_range=_pair(args.reward_range), constraints=budgets,
        )
    except OPEInputError as exc:
        raise OPEError(str(exc)) from exc
    if fair is not None:
        assert data.contexts is not None
        labels, spec = fairness.group_labels(data.contexts, fair)
        result = fairness.apply(result, fairness.evaluate_fairness(data, candidate, labels, spec, fair, seed=args.seed))
    result["candidate"] = version
    if baseline_version is not None:
        result["baselineVersion"] = baseline_version
    return result


def _print_human(result: dict[str, Any]) -> None:
    if result.get("kind") == "critic-calibration":
        print(" ".join(f"{k}={v:.6g}" if isinstance(v, float) else f"{k}={v}" for k, v in result.items()))
        return
    print(f"verdict: {result['verdict'].upper()} ({result['reason']})")
    what = "trajectories" if result.get("mode") == "trajectories" else "decisions"
    print(f"n={result['n']} {what} ESS={result['ess']:.1f} unsupported mass={result['unsupportedMass']}")
    for e in result["estimates"]:
        print(f"  {e['estimator']:>5}: {e['value']:.5g}  CI [{e['ciLow']:.5g}, {e['ciHigh']:.5g}]  "
              f"lower bound {e['lowerBound']}  baseline {e['baselineValue']:.5g}  -> {e['verdict']}")
    for c in result.get("constraints", []):
        if c["estimator"] is None:
            print(f"  {c['criterion']}: -> {c['verdict']} ({c['reason']})")
            continue
        print(f"  {c['criterion']} {c['estimator']:>5}: {c['value']}  upper bound {c['upperBound']}  "
              f"budget {c['budget']}  baseline {c['baselineValue']}  -> {c['verdict']}")
    if result.get("fairness"):
        f = result["fairness"]
        print(f"  fairness {f['metric']} {f['mode']} by {f['groupKey']}: bound {f['bound']} (max {f['max']}) "
              f"-> {f['verdict']}")
        for g in f.get("groups", []):
            print(f"    {g['group']:>12}: {g['value']}  [{g['lower']}, {g['upper']}]  n={g['n']} ESS={g['ess']}")


def main(args: argparse.Namespace) -> int:
    try:
        result = run(args)
    except OPEError as exc:
        print(f"policy-server ope: {exc}", file=sys.stderr)
        if args.write_result:
            error = {"v": evaluate.RESULT_VERSION, "kind": "ope", "error": str(exc)[:3500]}
            evaluate.write_result(args.write_result, error)
        return 2
    if args.write_result:
        evaluate.write_result(args.write_result, result)
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        _print_human(result)
    return 0
