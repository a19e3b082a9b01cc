"""Typed run configs: dataclasses, YAML files, dotted command-line overrides.

Both stages describe their run as a dataclass tree (see pretrain/run.py, finetune/run.py).
`parse_config(schema, argv)` merges, in order: the dataclass defaults, `--config FILE`
(YAML), then `key.sub=value` overrides; a schema's `PRESETS[value of PRESET_KEY]` (e.g. the
defaults of `task=mae`) go between the dataclass defaults and the files. Unknown keys and
wrong types are errors that name the key (OmegaConf structured configs check both). `--help`
opens with what the entry point does and one example (`help_header`, also used by
scripts/*.py through `ScriptParser`), then lists every option with its type and default.
"""
from __future__ import annotations

import argparse
import dataclasses
import re
import sys
from pathlib import Path
from typing import Any, get_type_hints

import yaml
from omegaconf import OmegaConf
from omegaconf.errors import OmegaConfBaseException


class ConfigError(ValueError):
    """A bad config file or override; the message is one line naming the key."""


def _options(schema, prefix: str = "") -> list[tuple[str, str, Any, str]]:
    """(dotted key, type, default, help) for every leaf field of a dataclass tree."""
    rows = []
    hints = get_type_hints(schema)
    for f in dataclasses.fields(schema):
        key, typ = prefix + f.name, hints[f.name]
        if dataclasses.is_dataclass(typ):
            rows += _options(typ, key + ".")
            continue
        default = f.default if f.default is not dataclasses.MISSING else (
            f.default_factory() if f.default_factory is not dataclasses.MISSING else "???")
        name = getattr(typ, "__name__", None) or str(typ).replace("typing.", "")
        rows.append((key, name, default, f.metadata.get("help", "")))
    return rows


def example_command(doc: str, command: str) -> str:
    """The first line of `doc` that runs `command` with no [optional] parts, with its `\\`
    continuation lines: the example an entry point's --help shows. ValueError if there is none."""
    lines = doc.splitlines()
    for i, line in enumerate(lines):
        if line.strip().startswith(command) and "[" not in line.split("#")[0]:
            out = [re.sub(r"\s+#", "  #", line.strip())]  # a comment after the command: two spaces
            while out[-1].split("  #")[0].rstrip().endswith("\\") and i + 1 < len(lines):
                i += 1
                out.append(lines[i].rstrip())
            return "\n".join(out)
    raise ValueError(f"no example of {command!r} in the docstring")


def help_header(doc: str, command: str) -> str:
    """The first lines of every entry point's --help: what it does (the docstring's first line)
    and one example command (`example_command`)."""
    return f"{doc.strip().splitlines()[0]}\nexample: {example_command(doc, command)}"


def _doc_body(doc: str) -> str:
    return doc.strip().split("\n", 1)[1].strip("\n") if "\n" in doc.strip() else ""


class ScriptParser(argparse.ArgumentParser):
    """argparse for scripts/*.py whose --help opens with what the script does and one example
    (`help_header` of its docstring), then argparse's usage and options, then the rest of the
    docstring. Subparsers are plain parsers (no `doc`)."""

    def __init__(self, *args, doc: str | None = None, script: str | None = None, **kwargs):
        if doc is not None:
            kwargs.setdefault("prog", Path(script).name if script else None)
            kwargs.setdefault("epilog", _doc_body(doc))
            kwargs.setdefault("formatter_class", argparse.RawDescriptionHelpFormatter)
        super().__init__(*args, **kwargs)
        self.doc = doc

    def format_help(self) -> str:
        if self.doc is None:
            return super().format_help()
        return help_header(self.doc, f"python scripts/{self.prog}") + "\n\n" + super().format_help()


def format_help(schema, prog: str, doc: str) -> str:
    lines = [*([help_header(doc, prog), ""] if doc.strip() else []),
             f"usage: {prog} [--config FILE.yaml] [key=value ...]", "", _doc_body(doc), "", "options (key=value):"]
    for key, typ, default, text in _options(schema):
        lines.append(f"  {key} ({typ}, default {default!r})" + (f": {text}" if text else ""))
    return "\n".join(lines)


def _one_line(e: OmegaConfBaseException) -> str:
    msg = str(e).strip().splitlines()[0]
    key = getattr(e, "full_key", None)
    return f"{key}: {msg}" if key and key not in msg else msg


def _yaml_problem(e: yaml.YAMLError) -> str:
    """'did not find expected ',' or ']' (line 1, column 10)' from a YAML parser error."""
    mark = getattr(e, "problem_mark", None)
    where = f" (line {mark.line + 1}, column {mark.column + 1})" if mark is not None else ""
    return f"{getattr(e, 'problem', None) or str(e).splitlines()[0]}{where}"


def _load_layer(layer: str | list[str]):
    """A config file (path) or the key=value overrides (list) -> an OmegaConf node; a file that
    is missing or a value that is not YAML is a one-line ConfigError naming it."""
    if isinstance(layer, str):
        if not Path(layer).is_file():
            raise ConfigError(f"config file not found: {layer}")
        try:
            return OmegaConf.load(layer)
        except yaml.YAMLError as e:
            raise ConfigError(f"{layer} is not valid YAML: {_yaml_problem(e)}") from None
    for item in layer:  # one at a time: the error names the override that does not parse
        try:
            OmegaConf.from_dotlist([item])
        except yaml.YAMLError as e:
            raise ConfigError(f"{item!r}: the value is not valid YAML: {_yaml_problem(e)} "
                              "(quote the whole key=value for the shell)") from None
    return OmegaConf.from_dotlist(layer)


def parse_config(schema, argv: list[str] | None = None, *, prog: str = "run.py", doc: str = ""):
    """-> an instance of the dataclass `schema` (a typed OmegaConf object, attribute access)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if "-h" in argv or "--help" in argv:
        print(format_help(schema, prog, doc))
        raise SystemExit(0)
    files, dotlist = [], []
    while argv:
        arg = argv.pop(0)
        if arg == "--config":
            if not argv:
                raise ConfigError("--config needs a file")
            files.append(argv.pop(0))
        elif arg.startswith("--config="):
            files.append(arg.split("=", 1)[1])
        elif "=" in arg and not arg.startswith("-"):
            dotlist.append(arg)
        else:
            raise ConfigError(f"unrecognised argument {arg!r} (expected --config FILE or key=value)")
    required: set[str] = set()  # recipes mark what only the user knows (their shard paths) as ???
    try:
        layers = []
        for layer in [*files, dotlist]:
            layer = _load_layer(layer)
            missing = OmegaConf.missing_keys(layer)
            # merging ??? keeps the default underneath, so track the holes ourselves
            required = (required | missing) - (_leaf_keys(layer) - missing)
            layers.append(layer)
        cfg = OmegaConf.merge(OmegaConf.structured(schema), *layers)
        # a schema may name one key whose value selects other defaults (pretrain: task=mae): those go
        # between the dataclass defaults and the files / overrides, which still win
        preset_key = getattr(schema, "PRESET_KEY", None)
        preset = getattr(schema, "PRESETS", {}).get(OmegaConf.select(cfg, preset_key)) if preset_key else None
        if preset:
            cfg = OmegaConf.merge(OmegaConf.structured(schema), OmegaConf.create(preset), *layers)
    except OmegaConfBaseException as e:
        raise ConfigError(_one_line(e)) from None
    if required:
        first = sorted(required)[0]
        raise ConfigError(f"no value for {', '.join(sorted(required))} (set it: {first}=...)")
    return cfg


def _leaf_keys(node, prefix: str = "") -> set[str]:
    keys = set()
    for k in node.keys():
        v = node._get_node(k)
        if OmegaConf.is_dict(v):
            keys |= _leaf_keys(v, f"{prefix}{k}.")
        else:
            keys.add(f"{prefix}{k}")
    return keys


def to_yaml(cfg) -> str:
    return OmegaConf.to_yaml(cfg)


def to_dict(cfg) -> dict:
    return OmegaConf.to_container(cfg, resolve=True)


def flat_scalars(cfg) -> dict[str, Any]:
    """{dotted key: int / float / str / bool} for tracker hyper-parameter tables."""
    out = {}

    def walk(d, prefix):
        for k, v in d.items():
            if isinstance(v, dict):
                walk(v, f"{prefix}{k}.")
            else:
                out[prefix + k] = v if isinstance(v, (int, float, str, bool)) else str(v)
    walk(to_dict(cfg), "")
    return out
