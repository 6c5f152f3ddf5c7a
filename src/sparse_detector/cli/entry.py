"""The program: the parser of every command, and :func:`main`, which runs one and turns the errors a user can
fix, signals and a launch as several processes into messages and exit statuses."""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import signal
import sys
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING

from .. import __version__
from .data import add_data_command
from .evaluation import add_analyze_command, add_compare_command, add_evaluate_command
from .outputs import file_in_the_way, in_the_way_message
from .parsing import Parser, Subparsers
from .predict import add_predict_command
from .quickstart import add_quickstart_command
from .study import add_study_command
from .train import add_train_command
from .visualize import add_visualize_command

if TYPE_CHECKING:
    from ..engine.distributed import DistributedContext

# torch.distributed's gloo backend, in the processes left when another one of the run died
PEER_GONE = "This is typically caused by a remote worker"  # ... crashing / hanging or bugs in the application


COMMANDS: list[Callable[[Subparsers], None]] = [
    add_train_command,
    add_evaluate_command,
    add_analyze_command,
    add_compare_command,
    add_predict_command,
    add_data_command,
    add_quickstart_command,
    add_visualize_command,
    add_study_command,
]


def build_parser() -> argparse.ArgumentParser:
    """The ``sparse-detector`` argument parser with every command."""
    parser = Parser(
        prog="sparse-detector",
        description="DETR-family detectors with sparse attention: train, evaluate, predict, analyze and draw "
        "attention.",
        epilog="run `sparse-detector COMMAND --help` for a command's options and an example",
    )
    parser.add_argument("--debug", action="store_true", help="show full tracebacks")
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    commands = parser.add_subparsers(dest="command", required=True)
    for add in COMMANDS:
        add(commands)
    return parser


def _close_progress_bars() -> None:
    """End any open tqdm bar's line so an error message starts on a line of its own."""
    tqdm_module = sys.modules.get("tqdm")
    if tqdm_module is not None:
        for bar in list(getattr(tqdm_module.tqdm, "_instances", ())):
            bar.close()


def _launched_context() -> DistributedContext | None:
    """This process's place in a run started by torchrun / srun as several processes; ``None`` otherwise (without
    importing torch.distributed when no launcher set the environment)."""
    if not {"WORLD_SIZE", "SLURM_NTASKS"} & os.environ.keys():
        return None
    from ..engine.distributed import context_from_environment

    context = context_from_environment()
    return context if context.enabled else None


def _several_processes_refusal(command: str) -> tuple[str, bool] | None:
    """Under torchrun / srun with several processes, every command but ``train`` would run once per process over the
    same files: the message saying so and whether this process prints it (rank 0); ``None`` when all is well."""
    if command == "train" or (context := _launched_context()) is None:
        return None
    message = (
        f"sparse-detector {command} runs in one process, but it was started as {context.world_size} processes "
        f"(torchrun / srun); start it without the launcher (`python -m sparse_detector {command} ...`, or srun "
        "--ntasks 1) — only train uses several processes"
    )
    return message, context.is_main


def _print_error(message: str, peer_gone: bool = False) -> None:
    """``error: message`` and the --debug hint on stderr; of a distributed run's processes, the first to report an
    error prints it (an error every process hits is printed once; another rank's is marked with its rank), and those
    left by another (``peer_gone``) only when that one reported none."""
    context = _launched_context()
    label = f"(rank {context.rank}) " if context is not None and not context.is_main else ""

    def show() -> None:
        print(f"error: {label}{message}\n(run with --debug for the full traceback)", file=sys.stderr)

    if context is None:
        show()
        return
    from ..engine.distributed import report_error

    with _on_sigterm(signal.SIG_IGN):  # torchrun stopping the others of a failed run: this one is stopping already
        report_error(message, show, peer_gone)


class Terminated(KeyboardInterrupt):
    """SIGTERM while a command starts up or runs outside training (which finishes its step and checkpoints on its
    own): the command stops as on Ctrl-C, with one line, not killed silently."""

    signum = signal.SIGTERM


@contextlib.contextmanager
def _on_sigterm(handler: Callable[[int, object], object] | int) -> Iterator[None]:
    """While the block runs, SIGTERM is handled by ``handler`` (the previous handler is back afterwards)."""
    if threading.current_thread() is not threading.main_thread():  # only the main thread may set handlers
        yield
        return
    previous = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def _stop(signum: int, frame: object) -> None:
    """While a command runs, SIGTERM raises :class:`Terminated`."""
    raise Terminated(signal.Signals(signum).name)


def main(argv: list[str] | None = None) -> int:
    """Run the command line ``argv`` (default: ``sys.argv``); returns the exit status."""
    args = build_parser().parse_args(argv)
    if refusal := _several_processes_refusal(args.command):
        message, prints = refusal
        if prints:
            print(f"error: {message}", file=sys.stderr)
        return 2
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    # torch's level once its import sets it; a SIGTERM during that import printed torch's INFO lines at exit
    logging.getLogger("torch").setLevel(logging.WARNING)
    from tqdm.contrib.logging import logging_redirect_tqdm  # log lines print above progress bars, not into them

    with logging_redirect_tqdm(), _on_sigterm(_stop):
        if args.debug:
            return args.func(args)
        try:
            status = args.func(args)
            sys.stdout.flush()  # here rather than at exit, so that a reader gone away is handled below
            return status
        except BrokenPipeError:  # the reader of the output stopped early (`... | head`): not an error of the command
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # so that the exit's flush is silent
            return 128 + signal.SIGPIPE
        except (FileExistsError, NotADirectoryError) as err:  # a file where an output folder should be made
            _close_progress_bars()
            path = Path(err.filename or "")
            blocker = file_in_the_way(path)
            message = in_the_way_message("output", path, blocker) if err.filename and blocker else str(err)
            _print_error(message)
            return 2
        except (ValueError, OSError, RuntimeError, FloatingPointError) as err:  # ours name the file / key / value
            _close_progress_bars()
            message, peer_gone = str(err), PEER_GONE in str(err)
            if peer_gone:  # gloo's words when another process of a distributed run died
                message = (
                    "another process of this distributed run stopped or stopped answering, so this one stops too; "
                    "that process printed its own error, or it was killed (see the launcher's report of the failed "
                    "rank)"
                )
            _print_error(message, peer_gone)
            return 2
        except KeyboardInterrupt as stop:
            _close_progress_bars()
            trainer = sys.modules.get("sparse_detector.engine.trainer")  # imported if training raised it
            if trainer is not None and isinstance(stop, trainer.StoppedAtOnce):
                print(f"stopped at once by a second {stop}; the last complete checkpoint is kept", file=sys.stderr)
                return 128 + stop.signum
            command = " ".join(filter(None, (args.command, getattr(args, "data_command", None))))
            cause = "SIGTERM" if isinstance(stop, Terminated) else "Ctrl-C"
            print(f"interrupted: sparse-detector {command} stopped before it finished ({cause})", file=sys.stderr)
            return 128 + getattr(stop, "signum", signal.SIGINT)
