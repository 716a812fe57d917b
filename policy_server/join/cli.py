"""`policy-server join`: decisions and rewards of every writer joined into a partitioned Parquet dataset.

    policy-server join --logs URL --out URL [--window 1h] [--reward-function sum|first|last|mean|max]
                       [--default-reward X | --exclude-unrewarded] [--as-of ISO|epoch] [--shard I/N] [--json]
    policy-server join --logs URL --out URL --trajectories [...]   # one row per step of each trajectory

Argument parsing and printing only; the join is ``policy_server.join.stream``. In an Indexed Job,
``--shard`` defaults to ``$JOB_COMPLETION_INDEX/--shards``. Exit code 2 with one line on stderr when the
inputs cannot be joined.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
from typing import Any

from policy_server.join import window

__all__ = ["add_parser", "add_reward_args", "main", "options_from_args", "trajectory_options"]


def add_reward_args(p: argparse.ArgumentParser, *, window_flag: str, window_default: str | None) -> None:
    """The join rules as flags, shared with `policy-server ope` and `train` (their dataset step)."""
    p.add_argument(window_flag, default=window_default, metavar="DURATION",
                   help="a reward counts when it arrives within this time after its decision (e.g. 1h, 30m, 7d; "
                        "default: unbounded); later ones are counted as late and not joined")
    p.add_argument("--reward-function", choices=[f.value for f in window.RewardFunction], default="first",
                   help="how several distinct rewards of one decision (and each cost) combine (default: first)")
    group = p.add_mutually_exclusive_group()
    group.add_argument("--default-reward", type=float, default=None, metavar="X",
                       help="the reward of a decision with none in its window (flagged in column `defaulted`)")
    group.add_argument("--exclude-unrewarded", action="store_true",
                       help="leave decisions without a reward out (the default when --default-reward is not given)")


def options_from_args(
    args: argparse.Namespace, window_text: str | None, as_of: str | None = None
) -> window.JoinOptions:
    """The JoinOptions the flags describe (raises JoinError with a one-line message)."""
    return window.JoinOptions(
        window=window.parse_duration(window_text),
        reward_function=window.RewardFunction(args.reward_function),
        default_reward=None if args.exclude_unrewarded else args.default_reward,
        as_of=window.parse_as_of(as_of),
    )


def add_parser(sub: Any) -> argparse.ArgumentParser:
    p: argparse.ArgumentParser = sub.add_parser(
        "join", help="join decisions with their rewards into a Parquet dataset (hour x variant)")
    p.add_argument("--logs", required=True, help="decision log URL (decisions/ and rewards/ of every writer)")
    p.add_argument("--out", required=True, help="output dataset URL (hour=YYYYMMDDHH/variant=NAME/ partitions)")
    add_reward_args(p, window_flag="--window", window_default=None)
    p.add_argument("--as-of", default=None, help="join as of this time (ISO 8601 or epoch seconds; default now)")
    p.add_argument("--shard", default=None, metavar="I/N",
                   help="join only the hours with hash(hour) %% N == I (default: $JOB_COMPLETION_INDEX/$JOIN_SHARDS)")
    p.add_argument("--memory-limit", default="1GB", help="DuckDB's memory limit (it spills beyond it)")
    p.add_argument("--temp-dir", default=None, help="local directory for the regrouped rewards and spills")
    p.add_argument("--trajectories", action="store_true",
                   help="write one row per step of each trajectory (episode_id, step, next_observation, done; "
                        "docs/decision-log.md); in memory, and a step without a reward counts 0 unless "
                        "--default-reward or --exclude-unrewarded says otherwise")
    p.add_argument("--json", action="store_true", help="print the summary as JSON")
    p.add_argument("--quiet", action="store_true", help="no progress lines on stderr")
    return p


def _shard_text(args: argparse.Namespace) -> str | None:
    if args.shard:
        return str(args.shard)
    index, count = os.environ.get("JOB_COMPLETION_INDEX"), os.environ.get("JOIN_SHARDS")
    return f"{index}/{count}" if index is not None and count else None


def trajectory_options(
    args: argparse.Namespace, window_text: str | None, as_of: str | None = None
) -> window.JoinOptions:
    """The join for trajectories: as for decisions, but a step without a reward counts 0 unless told otherwise."""
    options = options_from_args(args, window_text, as_of)
    if args.default_reward is None and not args.exclude_unrewarded:
        options = dataclasses.replace(options, default_reward=0.0)
    return options


def _trajectories(args: argparse.Namespace) -> dict[str, Any]:
    """`--trajectories`: the joined steps, in memory, written as one Parquet file under --out."""
    import fsspec
    import pyarrow.parquet as pq

    from policy_server.join import trajectories

    if _shard_text(args):
        raise window.JoinError("--shard splits the hour-by-hour join; --trajectories joins the whole log in one "
                               "process: drop --shard (and JOB_COMPLETION_INDEX/JOIN_SHARDS)")

    table, terminal_ids = trajectories.load_tables(args.logs, trajectory_options(args, args.window, args.as_of))
    steps = trajectories.step_table(table, terminal_ids)
    if steps.num_rows == 0:
        raise window.JoinError(f"the log at {args.logs!r} has no joined decisions with context.episode_id and "
                               "context.step; send them with /v1/act or join without --trajectories")
    fs, root = fsspec.core.url_to_fs(args.out)
    fs.makedirs(root, exist_ok=True)
    with fs.open(f"{root.rstrip('/')}/trajectories-0000.parquet", "wb") as f:
        pq.write_table(steps, f)
    done = steps.filter(steps["done"])
    return {"trajectories": done.num_rows, "steps": steps.num_rows,
            "truncated": int(sum(done["truncated"].to_pylist())), "out": args.out}


def main(args: argparse.Namespace) -> int:
    from policy_server.join import stream

    if args.trajectories:
        try:
            result = _trajectories(args)
        except (window.JoinError, OSError, ValueError) as exc:
            print(f"policy-server join: {exc}", file=sys.stderr)
            return 2
        print(json.dumps(result, indent=2) if args.json else " ".join(f"{k}={v}" for k, v in result.items()))
        return 0

    def progress(line: str) -> None:
        if not args.quiet:
            print(f"join: {line}", file=sys.stderr, flush=True)

    try:
        options = options_from_args(args, args.window, args.as_of)
        shard = stream.Shard.parse(_shard_text(args))
        summary = stream.join_to_dataset(args.logs, args.out, options, shard=shard, temp_dir=args.temp_dir,
                                         memory_limit=args.memory_limit, progress=progress)
    except (window.JoinError, OSError, ValueError) as exc:
        print(f"policy-server join: {exc}", file=sys.stderr)
        return 2
    result = summary.to_dict()
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        print(" ".join(f"{k}={result[k]}" for k in ("decisions", "rewarded", "defaulted", "excluded", "pending",
                                                      "late", "duplicates", "orphans")))
    return 0
