"""The `loraops` command line. Errors print one line naming cause and fix; exit 2 for bad input, 1 for failures.

Only argparse and the standard library load before a command runs: `--help` starts fast, and each command imports
what it uses (MLflow, torch and transformers take seconds).
"""

import argparse
import errno
import os
import sys
from pathlib import Path

from .. import interrupts
from ..errors import Interrupted, SpecError

# Choices shown in --help, kept here so the parser needs no registry import (tests check them against the registry).
ENGINES = ("any", "vllm", "lorax", "tgi")
SETTLE = ("accept", "revert")
ALIASES = ("production", "previous-production", "candidate")
# (module, class, exit code), first match wins: only modules already imported are looked at, so the CLI imports
# no library to classify an error (an error class whose module never loaded cannot have been raised).
EXIT_CODES = (
    ("pipelines.errors", "RunError", 1),
    ("registry.errors", "PromotionFailed", 1),
    ("registry.errors", "ServerUnavailable", 1),
    ("registry.errors", "StoreError", 1),
    ("registry.errors", "IntegrityError", 1),
    ("pipelines.errors", "InputError", 2),
    ("registry.errors", "RegistryError", 2),
    ("lora_core.errors", "LoraError", 2),
)
SIGNAL_EXIT = {"SIGINT": 130, "SIGTERM": 143}


DRIFT_HELP = (
    "an alias was moved outside loraops: accept (record the registry's state) or revert (move it back to "
    "where loraops's history says)"
)


class PrintVersion(argparse.Action):
    """`loraops --version`: the package version and the code it runs (git commit when run from a checkout)."""

    def __call__(self, parser, namespace, values, option_string=None):
        from importlib.metadata import version

        from registry.code_version import code_version

        print(f"loraops {version('loraops')} ({code_version()})")
        parser.exit()


def positive_int(text: str) -> int:
    value = int(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"{value} must be a positive integer")
    return value


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="loraops", description="Train, version and ship LoRA adapters.")
    parser.add_argument("--version", action=PrintVersion, nargs=0, help="the installed version and its code")
    commands = parser.add_subparsers(dest="command", required=True)
    demo = commands.add_parser("demo", help="LoRA on the offline MiniLM base: train, evaluate, merge, save")
    demo.add_argument("--steps", type=positive_int, default=300, help="optimizer steps (default 300)")
    demo.add_argument("--out", default=None, help="adapter folder (default $LORAOPS_HOME/demo/adapter)")
    analyze = commands.add_parser("analyze", help="SVD spectrum, PVE, elbow and rank advice for an adapter")
    analyze.add_argument("adapter_dir")
    analyze.add_argument("--base", help="base model folder: adds the amplification factor")
    analyze.add_argument("--compare", help="second adapter folder: subspace similarity phi(i, j)")
    analyze.add_argument("--out", help="folder for report.json and the PNG plots")
    compress = commands.add_parser("compress", help="best lower-rank approximation of an adapter")
    compress.add_argument("adapter_dir")
    _rank_or_pve(compress)
    compress.add_argument("--out", required=True)
    extract = commands.add_parser("extract", help="LoRA adapter from a full fine-tune (truncated SVD of W_ft - W0)")
    extract.add_argument("--base", required=True, help="base model folder")
    extract.add_argument("--finetuned", required=True, help="fine-tuned model folder")
    _rank_or_pve(extract)
    extract.add_argument("--out", required=True)
    merge = commands.add_parser("merge", help="fold a PEFT adapter into its base on disk, shard by shard")
    merge.add_argument("base_dir", help="base model folder (config.json + *.safetensors)")
    merge.add_argument("adapter_dir", help="PEFT adapter folder (adapter_config.json + adapter_model.safetensors)")
    merge.add_argument("out_dir", help="new folder for the merged model")
    _registry_commands(commands)
    run = commands.add_parser(
        "run",
        help="run the train_adapter flow for task files or folders of them: with PREFECT_API_URL set, one flow run "
        "per task on the work pool $LORAOPS_WORK_POOL, followed until all end; else here, one after another",
    )
    run.add_argument("tasks", nargs="+", metavar="TASK.yaml|FOLDER")
    run.add_argument("--local", action="store_true", help="run here, one after another, even with PREFECT_API_URL set")
    tune = commands.add_parser(
        "tune",
        help="search lr, rank and epochs with Optuna (training.search, or its defaults), each trial a child MLflow "
        "run (with PREFECT_API_URL set: trials in parallel on the work pool $LORAOPS_WORK_POOL); then the best "
        "trial's adapter goes through the gate, registration and promotion like `run`",
    )
    tune.add_argument("task", metavar="TASK.yaml")
    tune.add_argument("--trials", type=int, help="trials in the study, earlier ones included (default 12)")
    tune.add_argument("--timeout", type=float, help="seconds of training over the study's trials, earlier included")
    tune.add_argument(
        "--local", action="store_true", help="run the trials here, one after another, even with PREFECT_API_URL set"
    )
    schedule = commands.add_parser(
        "schedule",
        help="run a task on a cron: a Prefect deployment (on the work pool "
        "$LORAOPS_WORK_POOL when PREFECT_API_URL is set, else served by this process)",
    )
    schedule.add_argument("task", nargs="?", metavar="TASK.yaml")
    schedule.add_argument("--cron", help='e.g. "0 3 * * *"')
    schedule.add_argument("--apply-only", action="store_true", help="without a server: create the deployment and exit")
    schedule.add_argument("--list", action="store_true", help="the scheduled tasks, their cron, pool and last run")
    schedule.add_argument("--remove", metavar="TASK", help="delete a task's schedule")
    node = commands.add_parser(
        "train-node",
        help="a further node of multi-node training (training.nnodes > 1): "
        "join the runs announced on this LORAOPS_HOME",
    )
    node.add_argument("--once", action="store_true", help="exit after one run")
    node.add_argument("--wait", type=float, help="exit after this many seconds with no run to join")
    serve = commands.add_parser(
        "serve",
        help="serve a base and every production adapter on it, each under its task name, in vLLM's "
        "OpenAI-compatible server; promote and rollback reach it; stops with loraops",
    )
    serve.add_argument("--engine", choices=["vllm"], default="vllm", help="the serving engine (default vllm)")
    serve.add_argument("--base", help="the base to serve (name or fingerprint prefix; default the one in production)")
    serve.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    serve.add_argument("--port", type=positive_int, default=8000, help="port (default 8000)")
    serve.add_argument(
        "--max-lora-rank", type=positive_int, help="vLLM's --max-lora-rank (default: sized from the adapters)"
    )
    serve.add_argument(
        "--dtype",
        choices=["auto", "bfloat16", "float16", "float32"],
        default="auto",
        help="the engine's weights and activations (default auto: vLLM's choice, bfloat16 for float32 models on CPU)",
    )
    predict = commands.add_parser("predict", help="predict with a task's adapter on the shared base")
    predict.add_argument("ref", metavar="TASK[@alias|:version]")
    predict.add_argument("texts", nargs="+", metavar="TEXT")
    return parser


def _registry_commands(commands) -> None:
    adapters = commands.add_parser("adapters", help="look adapters up in the registry")
    adapters.add_argument(
        "action", choices=["list", "show", "lineage", "history", "fetch", "serve-config", "compare", "map"]
    )
    adapters.add_argument(
        "ref",
        nargs="?",
        help="TASK, or TASK@alias / TASK:version for show, fetch and compare; "
        "serve-config: one task (default all in production)",
    )
    adapters.add_argument("other", nargs="?", help="compare: the second TASK@alias / TASK:version")
    adapters.add_argument("--out", help="map: folder for map.json and map.png")
    adapters.add_argument("--task", help="list: only this task")
    adapters.add_argument("--task-prefix", default="", help="list: only tasks whose name starts with this")
    adapters.add_argument("--alias", choices=ALIASES, help="list: only versions this alias points at")
    adapters.add_argument(
        "--base", help="list, serve-config, map: only adapters on this base (name or fingerprint prefix)"
    )
    adapters.add_argument("--engine", choices=ENGINES[1:], default="vllm", help="serve-config: the serving engine")
    adapters.add_argument(
        "--lora-dir",
        default="./loras",
        help="serve-config: where the engine host keeps adapters fetched from S3 (default ./loras)",
    )
    adapters.add_argument("--mode", choices=["adapter", "merged"], default="adapter", help="fetch: which artifacts")
    adapters.add_argument("--json", action="store_true", help="machine-readable output")
    promote = commands.add_parser(
        "promote",
        help="upload a version, verify it, then make it production; with --all-passing, every task's candidate "
        "whose gate passed, in parallel",
    )
    promote.add_argument("task", nargs="?", help="the task to promote (not with --all-passing)")
    promote.add_argument("--version", help="version number (or an alias such as candidate); needed with TASK")
    promote.add_argument(
        "--all-passing",
        action="store_true",
        help="promote the candidate of every task whose gate passed (candidates already production are skipped); "
        "prints task, version and result, exits 1 naming the failures",
    )
    promote.add_argument("--base", help="--all-passing: only tasks on this base (name or fingerprint prefix)")
    promote.add_argument("--task-prefix", default="", help="--all-passing: only tasks whose name starts with this")
    promote.add_argument(
        "--jobs",
        type=positive_int,
        default=8,
        help="--all-passing: objects or parts in flight at once, across all tasks (default 8)",
    )
    promote.add_argument("--mode", choices=["adapter", "merged"], default="adapter")
    promote.add_argument("--target", help="s3://bucket/prefix or a folder (default $LORAOPS_PROMOTION_TARGET)")
    promote.add_argument("--reason", help="recorded in the history")
    promote.add_argument(
        "--serve-with",
        choices=ENGINES,
        default="any",
        help="refuse an adapter this serving engine would not load (default any)",
    )
    promote.add_argument("--drift", choices=SETTLE, help=DRIFT_HELP)
    rollback = commands.add_parser("rollback", help="production goes back to the previous production version")
    rollback.add_argument("task")
    rollback.add_argument("--reason", help="recorded in the history")
    rollback.add_argument("--drift", choices=SETTLE, help=DRIFT_HELP)


def _rank_or_pve(parser: argparse.ArgumentParser) -> None:
    choice = parser.add_mutually_exclusive_group(required=True)
    choice.add_argument("--rank", type=positive_int, help="keep the top K directions of every module")
    choice.add_argument("--pve", type=float, help="keep the smallest rank explaining this share of |dW|^2, in (0, 1]")


def run(args: argparse.Namespace) -> None:
    # Command modules load transformers or matplotlib: import only the one that runs.
    if args.command == "demo":
        from ..demo import run_demo

        run_demo(steps=args.steps, out_dir=Path(args.out) if args.out else None)
        return
    if args.command == "merge":
        from .merge import merge_command

        merge_command(args.base_dir, args.adapter_dir, args.out_dir)
        return
    if args.command == "train-node":
        from registry.settings import RegistrySettings

        from ..distributed import join_runs

        join_runs(RegistrySettings.from_env().home, args.once, args.wait)
        return
    if args.command == "tune":
        from .tune import tune

        tune(args.task, args.trials, args.timeout, local=args.local)
        return
    if args.command == "serve":
        from .serve import serve

        serve(args)
        return
    if args.command in ("run", "schedule", "predict"):
        from . import run as run_commands

        if args.command == "run":
            run_commands.run(args.tasks, local=args.local)
        elif args.command == "schedule" and args.list:
            run_commands.schedules()
        elif args.command == "schedule" and args.remove:
            run_commands.unschedule(args.remove)
        elif args.command == "schedule":
            if not (args.task and args.cron):
                raise SpecError("schedule needs TASK.yaml and --cron (or --list, or --remove TASK)")
            run_commands.schedule(args.task, args.cron, args.apply_only)
        else:
            run_commands.predict(args.ref, args.texts)
        return
    if args.command in ("adapters", "promote", "rollback"):
        from . import adapters as registry_commands

        if args.command == "adapters" and args.action not in ("list", "serve-config", "map") and not args.ref:
            from registry.errors import RegistryError

            raise RegistryError(f"adapters {args.action} needs a task; e.g. loraops adapters {args.action} my-task")
        if args.command == "promote":
            check_promote_args(args)
        if args.command == "promote" and args.all_passing:
            from .promote_all import promote_all_passing

            promote_all_passing(args)
        elif args.command == "adapters" and args.action == "serve-config":
            from .serve_config import serve_config

            serve_config(args)
        elif args.command == "adapters" and args.action == "compare":
            from .compare import compare

            compare(args)
        elif args.command == "adapters" and args.action == "map":
            from .compare import task_map

            task_map(args)
        else:
            getattr(registry_commands, args.command)(args)
        return
    from . import rank as rank_commands

    if args.command == "analyze":
        rank_commands.analyze(args.adapter_dir, args.base, args.compare, args.out)
    elif args.command == "compress":
        rank_commands.compress_command(args.adapter_dir, args.rank, args.pve, args.out)
    elif args.command == "extract":
        rank_commands.extract_command(args.base, args.finetuned, args.rank, args.pve, args.out)


def check_promote_args(args: argparse.Namespace) -> None:
    """promote takes TASK --version N, or --all-passing (narrowed by --base and --task-prefix), never both."""
    from registry.errors import RegistryError

    if args.all_passing and (args.task or args.version):
        raise RegistryError(
            "--all-passing promotes every task whose candidate passed its gate; drop TASK and --version "
            "(narrow it with --base or --task-prefix)"
        )
    if not args.all_passing and not (args.task and args.version):
        raise RegistryError("promote needs TASK --version N (a number or an alias such as candidate), or --all-passing")
    if not args.all_passing and (args.base or args.task_prefix):
        raise RegistryError("--base and --task-prefix narrow --all-passing; to promote one task give TASK --version N")


def exit_code(error: BaseException) -> int | None:
    """The documented exit code of a user-facing error; None for anything else (a bug: its traceback shows)."""
    for module, name, code in EXIT_CODES:
        if module in sys.modules and isinstance(error, getattr(sys.modules[module], name)):
            return code
    return None


def file_fault(error: BaseException) -> tuple[int, str] | None:
    """(exit code, line) for a file the command could not read or write (a folder given that is read-only, a path
    that does not exist, a full disk), or None. OSErrors with no file name (network errors among them) are not
    files, a full disk aside: a write() that fills it names none."""
    if not isinstance(error, OSError) or (error.filename is None and error.errno != errno.ENOSPC):
        return None
    where = "a file" if error.filename is None else str(error.filename)
    if error.errno == errno.ENOSPC:
        return 1, f"{where}: no space left on the disk: free some, or write to another disk"
    if isinstance(error, PermissionError):
        return 2, f"{where}: permission denied: choose a path you can write to, or change its permissions"
    if isinstance(error, FileNotFoundError | NotADirectoryError | IsADirectoryError | FileExistsError):
        return 2, f"{where}: {(error.strerror or type(error).__name__).lower()}: check the path"
    return 1, f"{where}: {error.strerror or type(error).__name__}"


def server_fault(error: BaseException) -> tuple[int, str] | None:
    """(exit code, line) for an MLflow server that is down or failing (1), or that refused the login or the
    account's permission (2: the user's settings), or None."""
    if "mlflow.exceptions" not in sys.modules:
        return None
    from registry.faults import login_message, server_message
    from registry.settings import RegistrySettings

    uri = RegistrySettings.from_env().tracking_uri
    if line := login_message(error, uri):
        return 2, line
    if line := server_message(error, uri):
        return 1, line
    return None


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")  # our own output says what moved
    handlers = interrupts.install()
    try:
        from registry.faults import network_defaults

        network_defaults()
        run(args)
    except KeyboardInterrupt as e:
        stopped = e if isinstance(e, Interrupted) else Interrupted("SIGINT")
        print(f"loraops: {stopped.line()}", file=sys.stderr)
        return SIGNAL_EXIT[stopped.signal_name]
    except Exception as e:
        code, message = exit_code(e), str(e).strip()
        if code is None and (fault := server_fault(e)):
            code, message = fault
        if code is None and (failed := file_fault(e)):
            code, message = failed
        if code is None:
            raise  # not a user-facing error: a bug, shown in full
        print(f"loraops: error: {message.splitlines()[0] if message else type(e).__name__}", file=sys.stderr)
        return code
    finally:
        interrupts.restore(handlers)
    return 0


if __name__ == "__main__":
    sys.exit(main())
