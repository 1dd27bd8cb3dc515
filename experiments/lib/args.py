"""Command-line values the tools share: comma lists, per-ranker settings, policy aliases, and the parser of
a tool that reads reports."""

from __future__ import annotations

import argparse
from collections.abc import Callable, Sequence


def parser_for(doc: str) -> argparse.ArgumentParser:
    """A tool's parser: the first paragraph of its docstring as the description, defaults shown in --help."""
    return argparse.ArgumentParser(description=doc.split("\n\n")[0],
                                   formatter_class=argparse.ArgumentDefaultsHelpFormatter)


class OneLineParser(argparse.ArgumentParser):
    """A parser whose errors are one line (`prog: error: ...`, exit 2), not the whole usage."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message}\n")


def parse_checked(p: argparse.ArgumentParser, argv: Sequence[str] | None,
                  check: Callable[[argparse.Namespace], None]) -> argparse.Namespace:
    """The parsed flags, then `check`ed (the values argparse cannot check itself): its ValueError is the
    parser's error, one line naming the flag."""
    args = p.parse_args(argv)
    try:
        check(args)
    except ValueError as exc:
        p.error(str(exc))
    return args


def ints(text: str) -> list[int]:
    """A comma list of integers ("0,1,2"), empty items ignored."""
    return [int(x) for x in text.split(",") if x.strip()]


def floats(text: str) -> list[float]:
    """A comma list of numbers ("0.8,1.2,1.6"), empty items ignored."""
    return [float(x) for x in text.split(",") if x.strip()]


def per_ranker(given: Sequence | None, rankers: int, flag: str) -> list:
    """A --ranker-* setting spread over the rankers: none (the service's default), one for all, or one each."""
    if not given:
        return [None] * rankers
    if len(given) == 1:
        return [given[0]] * rankers
    if len(given) != rankers:
        raise ValueError(f"{flag} takes one value or one per --ranker-path ({rankers}), not {len(given)}")
    return list(given)


def parse_same(items: Sequence[str]) -> dict[str, str]:
    """--same NAME=ALIAS items as {ALIAS: NAME}: the policy ALIAS of any experiment is pooled under NAME."""
    aliases = {}
    for item in items:
        name, sep, alias = item.partition("=")
        if not sep or not name or not alias:
            raise ValueError(f"--same wants NAME=ALIAS, got {item!r}")
        aliases[alias] = name
    return aliases
