"""``reinforge submit`` and ``reinforge jobs``: run any reinforge command as a Ray job.

    reinforge submit --address http://HOST:8265 --follow -- reinforge rl train --config rl-dqn-pong
    reinforge jobs list|status ID|logs ID [--follow]|stop ID

The working directory is uploaded (runs/, .venv/, .git/ and the .gitignore'd files left out);
on the cluster a leading ``reinforge`` runs as ``python -m pipelines.cli`` in the cluster's Python.
"""

from __future__ import annotations

import argparse


def _add_conn(p: argparse.ArgumentParser) -> None:
    p.add_argument("--address", help="Ray dashboard address, e.g. http://HOST:8265 "
                                     "(default RAY_API_SERVER_ADDRESS, an http RAY_ADDRESS, else http://127.0.0.1:8265)")
    p.add_argument("--token-file", help="the cluster's auth token (default RAY_AUTH_TOKEN, RAY_AUTH_TOKEN_PATH, "
                                        "and ~/.ray/auth_token for a loopback address only)")
    p.add_argument("--token", help="the cluster's auth token itself (prefer --token-file: argv is visible to others)")
    p.add_argument("--allow-insecure-token", action="store_true",
                   help="send the token over plain http to a non-loopback address (readable on the network path)")


def register(sub) -> None:
    p = sub.add_parser("submit", help="submit a reinforge command to a Ray cluster through the Jobs API",
                       description="Ship this directory to a Ray cluster and run COMMAND there as a job.")
    _add_conn(p)
    p.add_argument("--follow", action="store_true", help="stream the logs; exit with the job's status (0 = SUCCEEDED)")
    p.add_argument("--working-dir", default=".", help="directory to upload (default: the current one)")
    p.add_argument("--exclude", action="append", default=[], metavar="PATTERN", help="also leave out PATTERN")
    p.add_argument("--env", action="append", default=[], metavar="KEY=VALUE", help="environment variable for the job")
    p.add_argument("--submission-id", help="job id (default: generated)")
    p.add_argument("--num-cpus", type=float, help="CPUs reserved for the entrypoint (default 0)")
    p.add_argument("--num-gpus", type=float, help="GPUs reserved for the entrypoint (default 0)")
    p.add_argument("--python", default="python", help="the cluster's Python for a 'reinforge' command (default python)")
    p.add_argument("command", nargs=argparse.REMAINDER, metavar="-- COMMAND", help="the command to run, after --")
    p.set_defaults(handler=handle_submit)

    j = sub.add_parser("jobs", help="list, inspect, follow and stop Ray jobs")
    jsub = j.add_subparsers(dest="jobs_command", metavar="ACTION", parser_class=type(j))
    lp = jsub.add_parser("list", help="all jobs on the cluster")
    _add_conn(lp)
    for name, helptext in (("status", "a job's status"), ("logs", "a job's logs"), ("stop", "stop a running job")):
        sp = jsub.add_parser(name, help=helptext)
        sp.add_argument("job_id", metavar="ID", help="submission id (from 'reinforge submit' or 'jobs list')")
        _add_conn(sp)
        if name == "logs":
            sp.add_argument("--follow", action="store_true", help="keep streaming until the job ends")
    j.set_defaults(handler=handle_jobs)


def handle_submit(args: argparse.Namespace) -> int:
    from cluster.errors import ConfigError, ReinforgeError
    from cluster.jobs import Jobs, entrypoint_command

    command = list(args.command)
    if command and command[0] == "--":
        command = command[1:]
    entrypoint = entrypoint_command(command, python=args.python)
    env = {}
    for item in args.env:
        if "=" not in item:
            raise ConfigError(f"--env {item!r}: expected KEY=VALUE")
        k, v = item.split("=", 1)
        env[k] = v
    jobs = Jobs.connect(args.address, token_file=args.token_file, token=args.token,
                        allow_insecure_token=args.allow_insecure_token)
    job_id = jobs.submit(entrypoint, working_dir=args.working_dir, env_vars=env, submission_id=args.submission_id,
                         num_cpus=args.num_cpus, num_gpus=args.num_gpus, excludes=args.exclude)
    print(f"submitted job {job_id} to {jobs.address}: {entrypoint}", flush=True)
    if not args.follow:
        print(f"follow it with: reinforge jobs logs {job_id} --follow --address {jobs.address}")
        return 0
    status = jobs.follow(job_id)
    print(f"job {job_id} {status}", flush=True)
    if status == "SUCCEEDED":
        return 0
    if status == "FAILED":
        raise ReinforgeError(f"job {job_id} FAILED: {jobs.failure(job_id)}")
    raise ReinforgeError(f"job {job_id} {status}")


def handle_jobs(args: argparse.Namespace) -> int:
    from cluster.errors import ConfigError
    from cluster.jobs import Jobs

    action = getattr(args, "jobs_command", None)
    if not action:
        raise ConfigError("say what to do: reinforge jobs list|status ID|logs ID|stop ID")
    jobs = Jobs.connect(args.address, token_file=args.token_file, token=args.token,
                        allow_insecure_token=args.allow_insecure_token)
    if action == "list":
        rows = jobs.list()
        if not rows:
            print(f"no jobs on {jobs.address}")
            return 0
        print(f"{'submission id':<30}  {'status':<10}  entrypoint")
        for info in sorted(rows, key=lambda i: getattr(i, "start_time", 0) or 0):
            sid = getattr(info, "submission_id", None) or getattr(info, "job_id", "?")
            ep = str(getattr(info, "entrypoint", ""))
            print(f"{sid!s:<30}  {info.status!s:<10}  {ep[:80]}")
        return 0
    if action == "status":
        status = jobs.status(args.job_id)
        print(f"{args.job_id} {status}")
        if status == "FAILED":
            print(f"  {jobs.failure(args.job_id)}")
        return 0
    if action == "logs":
        if args.follow:
            status = jobs.follow(args.job_id)
            print(f"job {args.job_id} {status}")
            return 0 if status == "SUCCEEDED" else 1
        print(jobs.logs(args.job_id), end="")
        return 0
    if action == "stop":
        stopped = jobs.stop(args.job_id)
        print(f"{args.job_id}: {'stop requested' if stopped else 'not running (nothing to stop)'}")
        return 0
    return 2
