"""References in the README and docs/ that cannot rot, and the opening of every --help.

`problems(text, where)` lists what a markdown page names that does not exist (any more):
- a path of this repository (`scripts/...`, `configs/...`, `docs/...`, a package file; brace
  lists and globs expanded), the target of a relative link or image, or the heading a
  `page.md#anchor` link points to;
- a config key: `key=value` / `key.sub=value` in a command for pretrain/run.py or
  finetune/run.py, checked (key and type) by the entry point's own parser (`parse_config` on
  its schema, as `setup()` does, with the command's `--config` file), and the same in prose
  code spans, against either stage;
- a flag of a `python scripts/X.py` command that X's argparse parser (`build_parser()`) does
  not have, or a value outside the flag's choices; `accelerate launch` flags likewise.
External paths (another repository's files) are written as links to that repository.
The tests below also feed it broken snippets (it must name each breakage), and check that
every entry point's --help opens with what it does and one example that passes these checks.
Nothing is launched: the checks take seconds.
"""
from __future__ import annotations

import contextlib
import glob
import importlib.util
import io
import re
import shlex
import sys
from functools import cache
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]
OURS = ("scripts", "configs", "docs", "pretrain", "finetune", "mvit", "videodata", "tests")
PATH = re.compile(r"(?<![\w/.\-])((?:%s)/[\w.{},*\-/]*[\w*}])" % "|".join(OURS))
LINK = re.compile(r"!?\[([^\]]*)\]\(([^)\s]+)\)")
FENCE = re.compile(r"^```(\w*)\n(.*?)^```", re.S | re.M)
SPAN = re.compile(r"`([^`\n]+)`")
COMMAND = re.compile(r"\s*([A-Z_]+=\S*\s+)*(python|accelerate)\s")  # a line that runs python or accelerate
KEY = re.compile(r"^[a-z_][a-z0-9_]*(?:\.[a-z0-9_]+)*=")
PLACEHOLDERS = {"key=value", "key.sub=value"}  # how the docs write "a key" in general
STAGES = {"pretrain/run.py": ("pretrain.run", "PretrainConfig"), "finetune/run.py": ("finetune.run", "FinetuneConfig")}


# ----------------------------------------------------------------------------- what the code accepts


@cache
def schema(stage: str):
    module, name = STAGES[stage]
    return getattr(importlib.import_module(module), name)


@cache
def script(name: str):
    """scripts/NAME.py as a module (scripts/ is not a package; its modules import each other)."""
    path = ROOT / "scripts" / f"{name}.py"
    if str(ROOT / "scripts") not in sys.path:
        sys.path.append(str(ROOT / "scripts"))
    spec = importlib.util.spec_from_file_location(f"scripts_{name}", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up
    spec.loader.exec_module(module)
    return module


@cache
def accelerate_parser():
    from accelerate.commands.launch import launch_command_parser
    return launch_command_parser()


def config_problem(stage: str, args: list[str]) -> str | None:
    """The entry point's own error for `--config FILE key=value ...`, None if it accepts them.
    A recipe's ??? (a value only the user knows, e.g. their shards) left unset is not an error here."""
    from pretrain.config import ConfigError, parse_config
    argv = []
    for a in args:
        argv.append(str(ROOT / a) if argv and argv[-1] == "--config" else a)
    try:
        parse_config(schema(stage), argv)
    except ConfigError as e:
        return None if str(e).startswith("no value for") else str(e)
    except Exception as e:  # a value that is not YAML reaches the parser's YAML loader
        return f"{type(e).__name__}: {str(e).splitlines()[0]}"
    return None


def stage_problem(stage: str, args: list[str]) -> str | None:
    """A command's arguments for pretrain/run.py or finetune/run.py, as its parser sees them."""
    args = [a for a in args if a not in ("-h", "--help")]  # prints the options; not parsed here
    loose = [a for a in args if a.endswith("=...")]
    return next(filter(None, [key_problem(stage, a) for a in loose]),
                config_problem(stage, [a for a in args if a not in loose]))


def key_problem(stage: str, token: str) -> str | None:
    """`key=value` against the stage's schema; `key=...` (any value) only needs the key."""
    key, value = token.split("=", 1)
    if value != "...":
        return config_problem(stage, [token])
    from omegaconf import OmegaConf
    found = OmegaConf.select(OmegaConf.structured(schema(stage)), key, default=KeyError)
    return None if found is not KeyError else f"no key {key}"


def option_problems(parser, args: list[str], what: str) -> list[str]:
    """Flags in `args` that `parser` (or the subcommand the args choose) does not have, and
    values outside a flag's choices. Positionals and missing required flags are not checked:
    the docs write `...` and placeholders."""
    import argparse
    for action in parser._actions:  # a subcommand (make_shards.py kinetics ...) has its own flags
        if isinstance(action, argparse._SubParsersAction):
            chosen = next((a for a in args if a in action.choices), None)
            if chosen is None:
                return [f"{what}: no subcommand ({', '.join(action.choices)})"]
            parser = action.choices[chosen]
    options = {s: a for a in parser._actions for s in a.option_strings}
    out = []
    for i, arg in enumerate(args):
        if not arg.startswith("-") or re.fullmatch(r"-[\d.]+", arg):
            continue
        flag = arg.split("=", 1)[0]
        if flag not in options:
            out.append(f"{what}: unknown flag {flag}")
            continue
        choices = options[flag].choices
        value = arg.split("=", 1)[1] if "=" in arg else (args[i + 1] if i + 1 < len(args) else None)
        if choices and value is not None and value not in choices:
            out.append(f"{what}: {flag} {value} is not one of {sorted(choices)}")
    return out


# ----------------------------------------------------------------------------- what a page names


def path_problems(path: str) -> list[str]:
    names = [path]
    while any("{" in n for n in names):  # brace lists: configs/pretrain/k400_mvitv2_{s,l}_16x4_maskfeat.yaml
        n = next(n for n in names if "{" in n)
        m = re.search(r"\{([^{}]*)\}", n)
        names.remove(n)
        names += [n[:m.start()] + alt + n[m.end():] for alt in m.group(1).split(",")]
    return [f"no such path: {n}" for n in names
            if not (glob.glob(str(ROOT / n)) if "*" in n else (ROOT / n).exists())]


def command_problems(command: str) -> list[str]:
    """One shell command: our scripts' flags, our entry points' config keys, accelerate's flags."""
    try:
        words = shlex.split(command, comments=True)
    except ValueError as e:
        return [f"{command!r}: {e}"]
    while words and re.fullmatch(r"[A-Z_]+=\S*", words[0]):  # ACCELERATE_USE_CPU=true accelerate launch ...
        words.pop(0)
    words = [w for w in words if w != "..."]  # "the rest as before"
    if words[:2] == ["accelerate", "launch"]:
        stage = next((i for i, w in enumerate(words) if w in STAGES), None)
        if stage is None:
            return []
        out = option_problems(accelerate_parser(), words[2:stage], "accelerate launch")
        problem = stage_problem(words[stage], words[stage + 1:])
        return out + ([f"{words[stage]}: {problem}"] if problem else [])
    if words[:1] == ["python"] and len(words) > 1:
        if words[1] in STAGES:
            problem = stage_problem(words[1], words[2:])
            return [f"{words[1]}: {problem}"] if problem else []
        m = re.fullmatch(r"scripts/(\w+)\.py", words[1])
        if m:
            if not (ROOT / words[1]).is_file():
                return []  # the path check reports it
            return option_problems(script(m.group(1)).build_parser(), words[2:], words[1])
    return []


def prose_key_problems(span: str) -> list[str]:
    """`train.resume=latest`, `frozen_eval=true init=EXPORT`: keys of either stage. Python
    keyword arguments in prose (`pad_short=True`, `sampling="random"`) are not config keys."""
    out = []
    for token in span.split():
        if token in PLACEHOLDERS or re.search(r"=(True|False|None)$|=[\"']", token):
            continue
        errors = [key_problem(stage, token) for stage in STAGES]
        if all(errors):
            out.append(f"{token}: a key of neither stage ({errors[0]})")
    return out


def anchors(text: str) -> set[str]:
    """GitHub's ids of a page's headings: lower case, punctuation dropped, spaces as hyphens."""
    headings = re.findall(r"^#+ (.*)$", FENCE.sub("", text), re.M)
    return {re.sub(r"[^\w\- ]", "", h.strip().lower()).replace(" ", "-") for h in headings}


def problems(text: str, where: Path = ROOT / "README.md") -> list[str]:
    out = []
    for label, target in LINK.findall(text):
        if re.match(r"[a-z]+:", target):
            continue
        if target.startswith("#"):
            if target[1:] not in anchors(text):
                out.append(f"broken link: {target} (no such heading)")
            continue
        page, _, anchor = target.partition("#")
        if not (where.parent / page).exists():
            out.append(f"broken link: {target}")
        elif anchor and page.endswith(".md") and anchor not in anchors((where.parent / page).read_text()):
            out.append(f"broken link: {target} (no such heading)")
    # link targets are checked above (relative to the page); another repository's paths are link texts
    local = LINK.sub(lambda m: "" if re.match(r"[a-z]+:", m.group(2)) else m.group(1), text)
    out += [p for path in PATH.findall(local) for p in path_problems(path)]
    for lang, body in FENCE.findall(text):
        if lang in ("bash", "sh", "shell", "console", ""):
            for command in re.sub(r"\\\n", " ", body).splitlines():
                if COMMAND.match(command):
                    out += command_problems(command)
    prose = FENCE.sub("", text)
    for span in SPAN.findall(prose):
        if COMMAND.match(span):
            out += command_problems(span)
        elif all(KEY.match(t) for t in span.split()):
            out += prose_key_problems(span)
    return out


# ----------------------------------------------------------------------------- the tests


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(ROOT)))
def test_every_reference_in_the_docs_exists(page):
    assert problems(page.read_text(), page) == []


def test_the_docs_are_checked_at_all():
    """The checks above must see the commands and keys they are about."""
    text = "\n".join(p.read_text() for p in PAGES)
    assert "python scripts/make_shards.py kinetics" in text and "--config configs/pretrain/" in text
    assert len(PATH.findall(text)) > 50 and len(FENCE.findall(text)) > 10


def test_readme_keeps_the_generated_demo_block():
    start, end = script("demo_report").START, script("demo_report").END
    text = (ROOT / "README.md").read_text()
    assert text.count(start) == 1 and text.count(end) == 1 and text.index(start) < text.index(end)


BROKEN = [  # (snippet, what the report must name)
    ("```bash\naccelerate launch pretrain/run.py optim.lrr=1e-4\n```", "lrr"),  # a renamed key
    ("```bash\naccelerate launch pretrain/run.py train.steps=many\n```", "train.steps"),  # a wrong type
    ("```bash\naccelerate launch pretrain/run.py eval_only=true\n```", "eval_only"),  # the other stage's key
    ("```bash\naccelerate launch --config_file configs/accelerate/8gpu.yaml finetune/run.py \\\n"
     "    --config configs/finetune/k400_mvitv2_s_16x4_maskfeat.yaml data.trian=x\n```", "trian"),
    ("Resume with `train.resumee=latest`.", "resumee"),  # a key in prose
    ("Test any checkpoint: `eval_only=true inits=...`.", "inits"),
    ("See `configs/pretrain/k400_mvitv2_x_16x4_maskfeat.yaml`.", "k400_mvitv2_x"),  # a renamed path
    ("Recipes: `configs/pretrain/k400_mvitv2_{s,xl}_16x4_maskfeat.yaml`.", "k400_mvitv2_xl"),
    ("Read [the data page](docs/dataa.md).", "docs/dataa.md"),  # a broken link
    ("![curves](docs/demo/curve.png)", "curve.png"),  # a missing image
    ("Read [resuming](docs/data.md#resume-a-run).", "#resume-a-run"),  # a renamed heading
    ("```bash\npython scripts/make_shards.py folders videos --out shards --bogus 3\n```", "--bogus"),  # a bad flag
    ("```bash\npython scripts/extract_features.py --init x --data y --out z --pool max\n```", "--pool max"),
    ("```bash\naccelerate launch --num_proceses 2 pretrain/run.py\n```", "--num_proceses"),
    ("```bash\npython scripts/make_shard.py folders videos --out shards\n```", "make_shard.py"),  # a renamed script
    ("Run `python scripts/convert_checkpoint.py a.pyth b.safetensors --modell x`.", "--modell"),
]


@pytest.mark.parametrize("snippet,name", BROKEN)
def test_a_broken_reference_is_reported(snippet, name):
    found = problems(snippet)
    assert len(found) == 1 and name in found[0], found


def test_sound_references_pass():
    snippet = """See `configs/pretrain/k400_mvitv2_{s,l}_16x4_maskfeat.yaml`, `configs/accelerate/*.yaml`,
[data](docs/demo/report.md), `train.resume=latest`, `frozen_eval=true init=EXPORT`, `pad_short=True`, `init=...`.
```bash
ACCELERATE_USE_CPU=true accelerate launch --config_file configs/accelerate/cpu2.yaml pretrain/run.py \\
    --config configs/pretrain/k400_mvitv2_s_16x4_maskfeat.yaml data.train='s/t-{0..9}.tar' mask.unit=[1,4,4]
python scripts/make_shards.py kinetics --csv k.csv --videos v --out shards --name train --resume  # a comment
python scripts/extract_features.py --init x --data y --out z --pool cls --clips=3
```"""
    assert problems(snippet) == []


# ----------------------------------------------------------------------------- --help


def help_text(entry: str) -> tuple[str, str]:
    """(--help output, the docstring it opens with) of pretrain/run.py, finetune/run.py or scripts/X.py."""
    if entry in STAGES:
        from pretrain.config import parse_config
        out = io.StringIO()
        with contextlib.redirect_stdout(out), pytest.raises(SystemExit):
            parse_config(schema(entry), ["--help"], prog=f"accelerate launch {entry}",
                         doc=importlib.import_module(STAGES[entry][0]).__doc__)
        return out.getvalue(), importlib.import_module(STAGES[entry][0]).__doc__
    module = script(Path(entry).stem)
    return module.build_parser().format_help(), module.__doc__


ENTRIES = [*STAGES, *(f"scripts/{p.name}" for p in sorted((ROOT / "scripts").glob("*.py")))]


@pytest.mark.parametrize("entry", ENTRIES)
def test_help_opens_with_what_it_does_and_one_example_that_works(entry):
    text, doc = help_text(entry)
    lines = text.splitlines()
    assert lines[0] == doc.strip().splitlines()[0]
    command = f"accelerate launch {entry}" if entry in STAGES else f"python {entry}"
    assert lines[1].startswith(f"example: {command}")
    example = text.split("\n\n")[0].split("example: ", 1)[1]
    assert command_problems(re.sub(r"\\\n", " ", example)) == []
    assert "usage:" in text and ("key=value" in text or "--help" in text)
