"""Argument helpers every command module shares (kept apart from cli.py, which imports the command modules)."""
from __future__ import annotations


def split_args(args: list[str] | None) -> tuple[str | None, list[str]]:
    """[CONFIG] [key=value ...] -> (the config name or path, or None; the overrides)."""
    args = list(args or [])
    config = args.pop(0) if args and "=" not in args[0] else None
    return config, args
