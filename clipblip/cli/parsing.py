"""Reading a command line: argparse that explains itself (defaults in the help, a close match for a mistyped
option or choice, the mistyped option named before what it left missing) and the value types the commands
share; decoding flags made from GenerationOptions."""

from __future__ import annotations

import argparse
import difflib
import re
import typing
from typing import Any, Callable, NoReturn, Sequence

__all__ = ["HelpFormatter", "Parser", "positive", "option_parser", "decoding_options"]


class HelpFormatter(argparse.HelpFormatter):
    """argparse's, with each option's default after its help, unless the help says it or there is none."""

    def _get_help_string(self, action: argparse.Action) -> str:
        help = action.help or ""
        unset = any(action.default is value for value in (None, False, argparse.SUPPRESS))  # not 0, which is a value
        if action.option_strings and not unset and "default" not in help:
            help += " (default: %(default)s)"
        return help


NUMBER = re.compile(r"^-(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?$")


class Parser(argparse.ArgumentParser):
    """argparse with a close match suggested for a mistyped choice or option; a mistyped option is named even
    when argparse would first complain of a missing one (`--lables` leaves --labels missing)."""

    argv: Sequence[str] = ()  # the command line being parsed, set by parse()

    def __init__(self, *args, **kwargs):
        kwargs.setdefault("formatter_class", HelpFormatter)
        super().__init__(*args, **kwargs)

    def known_option(self, token: str) -> bool:
        """Whether argparse takes ``token`` as one of this parser's options (an unambiguous prefix included)."""
        name = token.split("=", 1)[0]
        return name in self._option_string_actions or (
            name.startswith("--") and sum(o.startswith(name) for o in self._option_string_actions) == 1)

    def unknown_option(self, tokens: Sequence[str]) -> str | None:
        """The first of ``tokens`` that looks like an option this parser does not have."""
        for token in tokens:
            if token == "--":
                return None
            if token.startswith("-") and token != "-" and not NUMBER.match(token) and not self.known_option(token):
                return token
        return None

    def unknown_option_message(self, tokens: Sequence[str]) -> str | None:
        unknown = self.unknown_option(tokens)
        if unknown is None:
            return None
        options = [o for a in self._actions for o in a.option_strings]
        close = difflib.get_close_matches(unknown.split("=")[0], options, n=1)
        return f"unrecognized arguments: {unknown}" + (f"; did you mean {close[0]}?" if close else "")

    def own_tokens(self) -> list[str]:
        """The part of the command line after this (sub)command's name."""
        words, argv, at = self.prog.split()[1:], list(self.argv), 0
        for word in words:
            if word not in argv[at:]:
                return []
            at = argv.index(word, at) + 1
        return argv[at:] if words else []

    def error(self, message: str) -> NoReturn:
        found = re.search(r"invalid choice: '([^']*)' \(choose from (.*)\)", message)
        if found:
            choices = re.findall(r"'([^']*)'", found.group(2))
            close = difflib.get_close_matches(found.group(1), choices, n=1)
            if close:
                message += f"; did you mean '{close[0]}'?"
        elif not message.startswith("unrecognized arguments"):
            message = self.unknown_option_message(self.own_tokens()) or message  # the cause, before its effects
        super().error(message)


def positive(value: str) -> int:
    """A whole number of at least 1 (threads, batch sizes, pixel limits, workers)."""
    try:
        number = int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{value!r}: not a whole number") from None
    if number < 1:
        raise argparse.ArgumentTypeError(f"{value}: must be at least 1")
    return number


def option_parser(name: str, kind: Any) -> Callable[[str], Any]:
    """The command-line reader of a decoding option of type ``kind``: int, float, or a choice of true/false and
    literal words (``bool | Literal["never"]``)."""
    words = [w for arg in typing.get_args(kind) for w in typing.get_args(arg) if isinstance(w, str)]
    if not words:  # int, float, or one of them or None
        return next(k for k in (kind, *typing.get_args(kind)) if k in (int, float))
    choices = {"true": True, "false": False, **{w: w for w in words}}

    def parse(value: str) -> Any:
        if value.lower() not in choices:
            raise argparse.ArgumentTypeError(f"{value!r}: choose {', '.join(choices)}")
        return choices[value.lower()]

    parse.__name__ = name
    parse.metavar = "{" + ",".join(choices) + "}"
    return parse


def decoding_options(p: argparse.ArgumentParser, default_length: str) -> None:
    """transformers' generate() options, one flag per field of GenerationOptions; unset ones come from the
    checkpoint's generation config."""
    from ..engine.generate import option_rules, option_types

    g = p.add_argument_group("decoding (default: greedy, or what the checkpoint's generation config says)")
    kinds = option_types()
    for name, rule in option_rules().items():
        flag = rule.flag or "--" + name.replace("_", "-")
        help = rule.help + (f" (default {default_length}, or the checkpoint's)" if name == "max_new_tokens" else "")
        if kinds[name] is bool:
            g.add_argument(flag, dest=name, action="store_true", default=None, help=help)
        else:
            parse = option_parser(name, kinds[name])
            g.add_argument(flag, dest=name, type=parse, default=None, help=help,
                           metavar=getattr(parse, "metavar", "N" if parse is int else "X"))
    g.add_argument("--preset", choices=["paper"], default=None,
                   help="paper: BLIP's published settings (3 beams; caption 5-20 tokens, VQA 1-10, prompt included)")
