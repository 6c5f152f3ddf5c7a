"""Building blocks of the parser: the parser class ("did you mean"), the help format, a subcommand with its
example and handler, ``--set`` overrides, and argparse types of numbers."""

from __future__ import annotations

import argparse
from collections.abc import Callable
from pathlib import Path

from ..config import check_score_threshold
from ..runs import is_run_or_checkpoint
from ..text import closest_name

Subparsers = argparse._SubParsersAction  # what add_subparsers() returns; add_parser() makes a subcommand


class Parser(argparse.ArgumentParser):
    """argparse's parser that adds the closest name to a mistyped subcommand, choice or option ("did you mean"),
    and a stray word given without its option to a missing required one."""

    def __init__(self, *args: object, **kwargs: object) -> None:
        super().__init__(*args, **kwargs)  # type: ignore[arg-type]
        self.suggest_on_error = False  # Python 3.14's own suggestion (off there by default) would say it twice

    def _check_value(self, action: argparse.Action, value: object) -> None:
        try:
            super()._check_value(action, value)
        except argparse.ArgumentError as err:
            if suggestion := closest_name(str(value), map(str, action.choices or ())):
                raise argparse.ArgumentError(action, f"{err.message}; did you mean {suggestion!r}?") from None
            raise

    def _parse_known_args(  # type: ignore[override]
        self, arg_strings: list[str], namespace: argparse.Namespace, *rest: object
    ) -> tuple[argparse.Namespace, list[str]]:
        """As argparse's, but a missing required option is named with the closest stray word given as its value:
        `evaluate runs/x` says "the following arguments are required: --checkpoint (did you mean --checkpoint
        runs/x?)" where argparse named the option only; so does `predict runs/x a.png`, whose first input names a
        run or checkpoint."""
        required = [action for action in self._actions if action.option_strings and action.required]
        for action in required:
            action.required = False  # checked below, where the words left over are known
        try:
            namespace, extras = super()._parse_known_args(arg_strings, namespace, *rest)  # type: ignore[misc]
        finally:
            for action in required:
                action.required = True
        if missing := [action for action in required if getattr(namespace, action.dest, None) is None]:
            names = [max(action.option_strings, key=len) for action in missing]
            strays = [text for text in extras if not text.startswith("-")]
            meant = " ".join(f"{name} {text}" for name, text in zip(names, strays, strict=False))  # in order
            if not meant and "--checkpoint" in names and (run := _first_input_naming_a_run(self, namespace)):
                meant = f"--checkpoint {run}"  # `predict runs/x a.png` took the run for an image
            hint = f" (did you mean {meant}?)" if meant else ""
            self.error(f"the following arguments are required: {', '.join(names)}{hint}")
        return namespace, extras

    def parse_args(  # type: ignore[override]
        self, args: list[str] | None = None, namespace: argparse.Namespace | None = None
    ) -> argparse.Namespace:
        """As argparse's, but an unknown option is reported by the (sub)command it was given to, with the closest
        of that command's options; inputs given after an option join the command's list of inputs."""
        parsed, extras = self.parse_known_args(args, namespace)
        command = _chosen_command(self, parsed)
        if extras and not any(text.startswith("-") for text in extras):
            extras = _join_inputs(command, parsed, extras)
        if extras:
            unknown = [text.split("=", 1)[0] for text in extras if text.startswith("-")]
            close = [(text, closest_name(text, command._option_string_actions)) for text in unknown]
            hints = "".join(
                f"; did you mean {option} instead of {text}?" for text, option in close if option not in (None, text)
            )
            command.error(f"unrecognized arguments: {' '.join(extras)}{hints}")
        return parsed


def _join_inputs(command: argparse.ArgumentParser, parsed: argparse.Namespace, extras: list[str]) -> list[str]:
    """Add ``extras``, inputs argparse left over, to the command's list of inputs if it takes one; returns what is
    still left over. argparse reads a command's positionals in one stretch, so in ``predict --checkpoint RUN a.png
    --threshold 0.5 b.png`` (or ``visualize attention RUN --output figs b.png``) the last image was refused."""
    inputs = _inputs_action(command)
    if inputs is None:
        return extras
    setattr(parsed, inputs.dest, [*(getattr(parsed, inputs.dest) or []), *extras])
    return []


def _inputs_action(command: argparse.ArgumentParser) -> argparse.Action | None:
    """The command's list of inputs: its last positional taking any number of words, as they were given."""
    listed = [action for action in command._actions if not action.option_strings and action.nargs in ("*", "+")]
    return listed[-1] if listed and listed[-1].type is None else None


def _first_input_naming_a_run(command: argparse.ArgumentParser, parsed: argparse.Namespace) -> str | None:
    """The command's first input where it names a run directory or checkpoint file (else None)."""
    inputs = _inputs_action(command)
    given = (getattr(parsed, inputs.dest, None) or []) if inputs else []
    return given[0] if given and is_run_or_checkpoint(Path(given[0])) else None


def _chosen_command(parser: argparse.ArgumentParser, args: argparse.Namespace) -> argparse.ArgumentParser:
    """The parser of the (sub)command ``args`` were parsed for, e.g. that of `data import`."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction) and getattr(args, action.dest, None) in action.choices:
            return _chosen_command(action.choices[getattr(args, action.dest)], args)
    return parser


class HelpFormatter(argparse.RawDescriptionHelpFormatter):
    """Shows an option's default where it has one worth showing; descriptions and examples keep their lines."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        help = action.help or ""
        if "default" in help or any(action.default is none for none in (None, False, argparse.SUPPRESS)):
            return help
        if action.default == [] or not action.option_strings:
            return help
        return f"{help} (default: %(default)s)"


def add_command(commands: Subparsers, name: str, help: str, example: str, func: Callable) -> argparse.ArgumentParser:
    """A subcommand parser with the shared formatter, an ``example:`` epilog and its handler."""
    parser = commands.add_parser(
        name, help=help, description=help, epilog=f"example:\n  {example}\n", formatter_class=HelpFormatter
    )
    parser.set_defaults(func=func)
    # also after the command (`train ... --debug`), where the error's hint sends a user; unset, the top level's holds
    parser.add_argument("--debug", action="store_true", default=argparse.SUPPRESS, help="show full tracebacks")
    return parser


def add_overrides(parser: argparse.ArgumentParser, example: str = "data.val_size=512") -> None:
    parser.add_argument(
        "--set",
        nargs="*",
        action="extend",  # --set a=1 --set b=2 applies both (argparse's default keeps only the last)
        default=[],
        type=_override,
        metavar="KEY=VALUE",
        help=f"config overrides, e.g. {example} (repeatable)",
    )


def _override(text: str) -> str:
    """An argparse type: a ``key.sub=value`` override (``--set`` takes every word up to the next option, so an
    image or run named after it lands here)."""
    if "=" in text:
        return text
    if Path(text).exists():  # an input: `predict ... --set data.val_size=512 photos/`
        raise argparse.ArgumentTypeError(
            f"expected KEY=VALUE, got {text!r}: --set reads every word after it up to the next option, so put "
            f"{text!r} before --set, or end the overrides with --"
        )
    raise argparse.ArgumentTypeError(
        f"expected KEY=VALUE, got {text!r}: give the key a value ({text}=VALUE); an input after --set goes before "
        "it, or after -- ending the overrides"
    )


def _int_at_least(minimum: int) -> Callable[[str], int]:
    """An argparse type: a whole number of at least ``minimum`` (argparse names the option in its error)."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"must be {minimum} or more, got {value}")
        return value

    return parse


positive_int, non_negative_int = _int_at_least(1), _int_at_least(0)


def score_threshold(text: str) -> float:
    """An argparse type: a detection score threshold, from 0 to 1 (scores are probabilities; see
    :func:`~.config.check_score_threshold`)."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number from 0 to 1, got {text!r}") from None
    try:
        check_score_threshold(value)
    except ValueError as err:
        raise argparse.ArgumentTypeError(str(err)) from None
    return value
