"""Tab completion for the shell, read from the command table's own parsers: command and
subcommand names, each command's options, and the values its arguments take (an action's
`complete`): file paths for task files and --workdir/--env-file, live cluster names, job
and request ids from the daemon."""

from __future__ import annotations

import argparse
from typing import Callable, Iterable

from prompt_toolkit.completion import CompleteEvent, Completer, Completion, PathCompleter
from prompt_toolkit.document import Document

SHELL_WORDS = ("exit", "help")


class Spec:
    """What one (sub)command accepts, from its parser."""

    def __init__(self, parser: argparse.ArgumentParser):
        self.options: dict[str, argparse.Action] = {}
        self.positionals: list[argparse.Action] = []
        self.subcommands: dict[str, Spec] = {}
        for action in parser._actions:
            if isinstance(action, argparse._SubParsersAction):
                self.subcommands = {name: Spec(p) for name, p in action.choices.items()
                                    if name != "shell"}
            elif action.option_strings:
                for opt in action.option_strings:
                    self.options[opt] = action
            else:
                self.positionals.append(action)

    def positional(self, index: int) -> argparse.Action | None:
        """The action that takes the index-th positional word."""
        for action in self.positionals:
            if action.nargs in ("*", "+", argparse.REMAINDER):
                return action
            if index == 0:
                return action
            index -= 1
        return None


def _takes_value(action: argparse.Action) -> bool:
    return action.nargs != 0


class ShellCompleter(Completer):
    """`values(kind, words)` gives the live values of a kind (cluster, request, ...), each
    a word or a (word, meta) pair, the words typed so far as context (a job id's cluster)."""

    def __init__(self, parser: argparse.ArgumentParser,
                 values: Callable[[str, list[str]], Iterable[str | tuple[str, str]]]):
        self.top = Spec(parser)
        self.values = values
        self.paths = PathCompleter(expanduser=True)

    def get_completions(self, document: Document, complete_event: CompleteEvent):
        text = document.text_before_cursor
        words = text.split()
        current = "" if not words or text[-1:].isspace() else words.pop()
        if words[:1] == ["skyctl"]:
            words = words[1:]
        spec, rest = self.top, list(words)
        while rest and rest[0] in spec.subcommands:
            spec = spec.subcommands[rest.pop(0)]
        if spec is self.top and not rest:
            yield from _matching(list(spec.subcommands) + list(SHELL_WORDS), current)
            return
        if spec.subcommands and not rest:
            yield from _matching(spec.subcommands, current)
            return
        if current.startswith("-"):
            options: list[str] = sorted(spec.options, key=_long_options_first)
            yield from _matching(options, current)
            return
        kind = self._kind(spec, rest)
        if kind == "path":
            yield from self.paths.get_completions(Document(current), complete_event)
        elif kind:
            yield from _matching(self.values(kind, words), current)

    @staticmethod
    def _kind(spec: Spec, rest: list[str]) -> str | None:
        """What the next word is: an option's value, or the n-th positional's."""
        index, expect_value = 0, None
        for word in rest:
            if expect_value is not None:
                expect_value = None
            elif word.startswith("-") and word in spec.options and "=" not in word:
                action = spec.options[word]
                expect_value = action if _takes_value(action) else None
            elif not word.startswith("-"):
                index += 1
        if expect_value is not None:
            return getattr(expect_value, "complete", None)
        positional = spec.positional(index)
        if positional is None:
            return None
        # exec's first word is the cluster, unless -c names it.
        first = getattr(positional, "complete_first", None)
        if first and index == 0 and not {"-c", "--cluster"} & set(rest):
            return first
        return getattr(positional, "complete", None)


def _matching(options: Iterable[str | tuple[str, str]], word: str):
    """Completions of `word`: plain words, or (word, meta) pairs (a request's status)."""
    for opt in options:
        text, meta = (opt, "") if isinstance(opt, str) else opt
        if text.startswith(word):
            yield Completion(text, start_position=-len(word), display_meta=meta or None)


def _long_options_first(option: str) -> tuple[bool, str]:
    return not option.startswith("--"), option
