"""Command-line conventions shared by every unidet2 tool and the launcher.

One flag style: ``--config-file CFG`` for the LazyConfig, ``--checkpoint PATH`` for a model checkpoint, trailing
``key=value`` config overrides, ``--no-<step>`` to skip an optional step. Spellings that earlier versions
accepted are refused with a message naming the flag that replaced them, instead of being taken silently
(argparse would otherwise accept ``--config`` as an abbreviation of ``--config-file``).
"""

from __future__ import annotations

import argparse
from collections.abc import Mapping

__all__ = ["RENAMED_FLAGS", "reject_renamed_flags"]

# old spelling -> the flag that replaced it
RENAMED_FLAGS = {"--config": "--config-file", "--ckpt": "--checkpoint"}


class _RenamedFlag(argparse.Action):
    def __init__(self, option_strings, dest, replacement: str, **kwargs):
        self.replacement = replacement
        super().__init__(option_strings, dest, nargs="?", help=argparse.SUPPRESS, **kwargs)

    def __call__(self, parser, namespace, values, option_string=None):
        parser.error(f"{option_string} is no longer accepted: use {self.replacement}")


def reject_renamed_flags(parser: argparse.ArgumentParser, renamed: Mapping[str, str] | None = None) -> None:
    """Make ``parser`` refuse each old flag of ``renamed`` (default :data:`RENAMED_FLAGS`) with a clear error.

    Only flags the parser does not define itself are added, so a tool that still owns one of the spellings keeps it.
    """
    for old, new in (RENAMED_FLAGS if renamed is None else renamed).items():
        if old not in parser._option_string_actions:
            parser.add_argument(old, dest=f"_renamed_{old.lstrip('-').replace('-', '_')}", action=_RenamedFlag,
                                replacement=new)
