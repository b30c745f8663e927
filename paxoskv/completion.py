"""Shell completion for ``paxoskv``, generated from its argparse parser.

Generated rather than written by hand so a new command, flag or choice completes without
anyone remembering to update a script; no dependency (argcomplete would add one, and a
Python start-up per Tab press). zsh runs the same function through its bash emulation
(``bashcompinit``).
"""

from __future__ import annotations

import argparse
import shlex

__all__ = ["script"]


def _tree(parser: argparse.ArgumentParser, path: str,
          out: dict[str, tuple[list[str], list[str], dict[str, list[str]], list[str]]]
          ) -> None:
    """path -> (subcommands, options, option -> choices, options that take a value)."""
    subs: list[str] = []
    options: list[str] = []
    choices: dict[str, list[str]] = {}
    valued: list[str] = []
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, child in action.choices.items():
                subs.append(name)
                _tree(child, f"{path} {name}".strip(), out)
            continue
        if not action.option_strings and action.choices is not None:
            subs.extend(str(c) for c in action.choices)  # a positional with choices
        for flag in action.option_strings:
            options.append(flag)
            if action.nargs != 0:
                valued.append(flag)
                if action.choices is not None:
                    choices[flag] = [str(c) for c in action.choices]
    out[path] = (subs, options, choices, valued)


def _words(items: list[str]) -> str:
    return shlex.quote(" ".join(items))


def _bash(parser: argparse.ArgumentParser) -> str:
    tree: dict[str, tuple[list[str], list[str], dict[str, list[str]], list[str]]] = {}
    _tree(parser, "", tree)
    steps = [f'"{path.rpartition(" ")[0]}|{path.rpartition(" ")[2]}"'
             for path in tree if path]
    values: list[str] = []
    words: list[str] = []
    for path, (subs, options, choices, valued) in tree.items():
        for flag in valued:
            if flag in choices:
                values.append(f'        "{path}|{flag}") COMPREPLY=($(compgen -W '
                              f'{_words(choices[flag])} -- "$cur")); return 0;;')
            else:  # a free value (a path, a URL, a number): the shell's default completion
                values.append(f'        "{path}|{flag}") return 0;;')
        words.append(f'        "{path}") opts={_words(subs + options)};;')
    return "\n".join([
        "# paxoskv completion (bash): eval \"$(paxoskv completion bash)\"",
        "_paxoskv() {",
        '    local cur="${COMP_WORDS[COMP_CWORD]}" prev="${COMP_WORDS[COMP_CWORD-1]}"',
        '    local path="" i w opts=""',
        "    COMPREPLY=()",
        "    for ((i = 1; i < COMP_CWORD; i++)); do",
        '        w="${COMP_WORDS[i]}"',
        '        case "$path|$w" in',
        f"        {'|'.join(steps)}) path=\"${{path:+$path }}$w\";;",
        "        esac",
        "    done",
        '    case "$path|$prev" in',
        *values,
        "    esac",
        '    case "$path" in',
        *words,
        "    esac",
        '    COMPREPLY=($(compgen -W "$opts" -- "$cur"))',
        "}",
        "complete -o default -F _paxoskv paxoskv",
    ])


def script(parser: argparse.ArgumentParser, shell: str) -> str:
    """The completion script for ``shell`` (bash or zsh)."""
    body = _bash(parser)
    if shell == "bash":
        return body
    if shell == "zsh":
        return "\n".join(["# paxoskv completion (zsh): eval \"$(paxoskv completion zsh)\"",
                          "(( $+functions[compdef] )) || { autoload -U +X compinit && "
                          "compinit; }",
                          "autoload -U +X bashcompinit && bashcompinit", body])
    raise ValueError(f"no completion for shell {shell!r}")
