"""The ``tllib-jtln`` command: ``train``, ``test``, ``list``, ``data``, ``bench``.

Exit status: 0 done; 2 stopped with a one-line error on stderr, never a traceback: bad input
(flags, files, data) or an environment to fix (a full disk, a log folder in use); 1 ``bench``
finished but some of its runs failed (each named on its line); 130 interrupted (Ctrl-C; for
``train`` and ``bench`` also SIGTERM, and SIGINT where it came in ignored). Heavy imports
(torch, timm) happen inside the subcommands, so ``--version`` and errors are instant.
"""
from __future__ import annotations

import argparse
import contextlib
import difflib
import os
import sys
import warnings
from typing import Callable, Sequence

from . import __version__
from .engine.launch import relay_worker_error
from .errors import UserError, one_line
from .stop_signals import stop_signals_as_ctrl_c

PROG = "tllib-jtln"


class OneLineParser(argparse.ArgumentParser):
    """argparse that reports a usage error as one line (naming the fix) and exits 2.

    An unknown flag is reported by the subcommand it was given to (``see `tllib-jtln train --help```),
    with the closest flag that subcommand knows (``--tradeoff``: did you mean ``--trade-off``?)."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.commands: dict[str, OneLineParser] = {}  # subcommand -> its parser, under `command_dest`
        self.command_dest = ""

    def error(self, message: str) -> None:  # type: ignore[override]
        sys.stderr.write(f"{self.prog}: error: {message} (see `{self.prog} --help`)\n")
        sys.exit(2)

    def parse_args(self, args=None, namespace=None):  # type: ignore[override]
        parsed, unknown = self.parse_known_args(args, namespace)
        if unknown:
            owner = self.parser_of(parsed)
            owner.error(f"unrecognized arguments: {' '.join(unknown)}{owner.closest_flag(unknown)}")
        return parsed

    def parser_of(self, parsed: argparse.Namespace) -> "OneLineParser":
        """The (sub)parser of the innermost subcommand in ``parsed`` (``data prepare``: prepare's)."""
        sub = self.commands.get(getattr(parsed, self.command_dest, None))
        return sub.parser_of(parsed) if sub is not None else self

    def closest_flag(self, words: Sequence[str]) -> str:
        """``; did you mean --FLAG?`` for the first unknown flag close to a known one, else ``""``."""
        known = [flag for action in self._actions for flag in action.option_strings]
        for word in words:
            if word.startswith("-"):
                close = difflib.get_close_matches(word.split("=", 1)[0], known, n=1, cutoff=0.75)
                if close:
                    return f"; did you mean {close[0]}?"
        return ""


def _list_entries(kind: str, pattern: str | None) -> list[str]:
    if kind == "methods":
        from .methods import METHODS
        return METHODS.names()
    if kind == "datasets":
        from .data import DATASETS
        return DATASETS.names()
    if kind == "costs":
        from .cost import COSTS
        return COSTS.names()
    if kind == "regularizers":
        from .methods import REGULARIZERS
        return REGULARIZERS.names()
    from .models import list_archs
    return list_archs(pattern)


def cmd_list(args: argparse.Namespace) -> int:
    names = _list_entries(args.kind, args.filter)
    if args.filter and args.kind != "archs":
        import fnmatch
        names = [n for n in names if fnmatch.fnmatch(n, args.filter)]
    print("\n".join(names))
    return 0


def cmd_train(args: argparse.Namespace) -> int:
    nproc = getattr(args, "nproc_per_node", None)
    if nproc is not None and nproc > 1 and "LOCAL_RANK" not in os.environ:
        from .engine.launch import launch_workers
        return launch_workers(nproc, args.argv)
    if nproc is not None and os.environ.get("LOCAL_WORLD_SIZE", str(nproc)) != str(nproc):
        raise UserError(f"--nproc-per-node {nproc} under a launcher that started {os.environ['LOCAL_WORLD_SIZE']} "
                        f"processes per node; give one of them")
    from .engine.run import train_from_flags
    # a preempted run keeps its checkpoints and says --resume; a DDP worker keeps the default, so its
    # launcher's SIGTERM ends it at once, even inside a collective
    signals = contextlib.nullcontext() if "LOCAL_RANK" in os.environ else stop_signals_as_ctrl_c()
    with signals:
        return train_from_flags(_given(args))


def cmd_test(args: argparse.Namespace) -> int:
    from .engine.run import test_from_flags
    return test_from_flags(_given(args))


def cmd_data(args: argparse.Namespace) -> int:
    from .data import prepare_dataset
    path = prepare_dataset(args.name, root=args.root, download=args.download)
    print(f"{args.name}: ready in {path}")
    return 0


def cmd_bench(args: argparse.Namespace) -> int:
    from .bench.suite import run_suite
    try:
        with stop_signals_as_ctrl_c():
            return run_suite(args.suite, out=args.out, dry_run=args.dry_run, only=args.only, jobs=args.jobs,
                             report_only=args.report_only, results_doc=args.results_doc)
    except KeyboardInterrupt:  # the running children are ended by then
        sys.stderr.write(f"{PROG}: interrupted; finished runs and the checkpoints of stopped ones are kept "
                         f"(run the same bench command again to continue)\n")
        return 130


def _given(args: argparse.Namespace) -> dict:
    """The Config fields the user actually gave (flags are SUPPRESSed by default).

    TLlib's positional dataset root (``train data/cub200 -d CUB200``) becomes ``root``."""
    skip = {"command", "func", "nproc_per_node", "argv", "root_positional"}
    given = {k: v for k, v in vars(args).items() if k not in skip}
    positional = getattr(args, "root_positional", None)
    if positional is not None:
        if given.get("root") not in (None, positional):
            raise UserError(f"the dataset root is given twice ({positional} and --root {given['root']}); give one")
        given["root"] = positional
    return given


def _add_run_arguments(parser: argparse.ArgumentParser) -> None:
    """Config flags plus TLlib's positional dataset root."""
    from .config import add_arguments

    parser.add_argument("root_positional", nargs="?", default=argparse.SUPPRESS, metavar="ROOT",
                        help="dataset root folder, as TLlib's scripts take it (= --root ROOT)")
    add_arguments(parser)


def build_parser() -> OneLineParser:
    parser = OneLineParser(prog=PROG, description="Joint Transfer Learning Network (JTLN) and its baselines.")
    parser.add_argument("--version", action="version", version=f"{PROG} {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="{train,test,list,data,bench}", parser_class=OneLineParser)

    train = sub.add_parser("train", help="train a method (default: jtln on the embedded Fashion-MNIST task)")
    _add_run_arguments(train)
    train.add_argument("--nproc-per-node", "--nproc_per_node", type=int, default=None, metavar="N",
                       help="run N DistributedDataParallel processes on this machine through PyTorch's launcher "
                            "(torch.distributed.run), as `torchrun --standalone --nproc-per-node N` would")
    train.set_defaults(func=cmd_train)

    test = sub.add_parser("test", help="evaluate the best checkpoint of a finished run (--log DIR)")
    _add_run_arguments(test)
    test.set_defaults(func=cmd_test)

    lst = sub.add_parser("list", help="show registered methods, datasets, archs, costs or regularizers (--with)")
    lst.add_argument("kind", choices=("methods", "datasets", "archs", "costs", "regularizers"))
    lst.add_argument("--filter", default=None, help="shell pattern, e.g. 'resnet*'")
    lst.set_defaults(func=cmd_list)

    data = sub.add_parser("data", help="data tools: `data prepare fashion-mnist`")
    data_sub = data.add_subparsers(dest="data_command", metavar="{prepare}", parser_class=OneLineParser)
    prep = data_sub.add_parser("prepare", help="put a dataset in place (download only with --download)")
    prep.add_argument("name")
    prep.add_argument("--root", default=None)
    prep.add_argument("--download", action="store_true")
    prep.set_defaults(func=cmd_data)

    bench = sub.add_parser("bench", help="run an accuracy suite: methods x settings x seeds")
    bench.add_argument("--suite", required=True, help="suite YAML, e.g. configs/suite/fashion_mnist.yaml")
    bench.add_argument("--out", default=None, help="output folder (default: from the suite file)")
    bench.add_argument("--only", default=None,
                       help="run only runs whose name (SETTING/ROW/seedN; SETTING/ROW/SPLIT/seedN with splits) "
                            "matches one of these comma-separated shell patterns, e.g. 'K2/erm/*,K2/jtln*/*'")
    bench.add_argument("--dry-run", action="store_true", help="list the runs and exit")
    bench.add_argument("--jobs", type=int, default=1, help="runs side by side (each gets cores/jobs threads)")
    bench.add_argument("--report-only", action="store_true",
                       help="train nothing: write the tables of the finished runs (also while another bench runs)")
    bench.add_argument("--results-doc", default=None, metavar="PAGE",
                       help="also put the suite's tables into PAGE as its own section, e.g. docs/results.md")
    bench.set_defaults(func=cmd_bench)
    parser.commands, parser.command_dest = {"train": train, "test": test, "list": lst, "data": data,
                                            "bench": bench}, "command"
    data.commands, data.command_dest = {"prepare": prep}, "data_command"
    return parser


_PYTHON_FORMAT_WARNING = warnings.formatwarning


def _format_warning(message, category, filename, lineno, line=None) -> str:
    """Our own warnings (skipped bad images) as one line; others as Python prints them."""
    if category.__module__.startswith("tllib_jtln"):
        return f"{PROG}: warning: {message}\n"
    return _PYTHON_FORMAT_WARNING(message, category, filename, lineno, line)


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    args.argv = list(sys.argv[1:] if argv is None else argv)
    func: Callable[[argparse.Namespace], int] | None = getattr(args, "func", None)
    if func is None:
        parser.error("choose a command: train, test, list, data or bench")
    warnings.formatwarning = _format_warning
    for stream in (sys.stdout, sys.stderr):  # a path the terminal's encoding cannot show is escaped, not fatal
        if hasattr(stream, "reconfigure"):
            stream.reconfigure(errors="backslashreplace")
    try:
        return func(args)
    except UserError as exc:
        return _error(f"{PROG}: error: {one_line(exc)}")
    except BrokenPipeError:  # the reader of stdout went away (`list archs | head`): a normal end for a listing
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0 if args.command == "list" else 2
    except OSError as exc:  # outside a run (a run names its folder and how to continue, see engine.trainer)
        where = f"{exc.filename}: " if exc.filename else ""
        return _error(f"{PROG}: error: {where}{one_line(exc) if not exc.strerror else exc.strerror}")
    except KeyboardInterrupt as exc:  # a run says what it kept in the exception's text
        sys.stderr.write(f"{PROG}: interrupted{'; ' + str(exc) if str(exc) else ''}\n")
        return 130
    except Exception:
        if relay_worker_error():  # a worker of `--nproc-per-node`: its launcher reports the traceback
            return 1
        raise


def _error(line: str) -> int:
    """Print the one-line error (a worker of `--nproc-per-node` leaves it to its launcher); exit 2."""
    if not relay_worker_error(line):
        sys.stderr.write(line + "\n")
    return 2


if __name__ == "__main__":
    sys.exit(main())
