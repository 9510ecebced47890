"""Settings: a script's CONFIG on the command line (with --help read from the
comments beside it) and the checks of their ranges."""
import argparse
import ast
import math
import textwrap
import tokenize
from types import SimpleNamespace

from utils import fail


def check_settings(cfg, choices=None, at_least=None, positive=(), zero_is_off=None):
    """Stop in one line at the first setting out of its range: choices {key: allowed
    values}, at_least {key: minimum} (None, the paper's value to come, passes),
    positive (keys that must be > 0), zero_is_off {key: what 0 means} (>= 0, or None)."""
    def flag(key):
        return "--" + key.replace("_", "-")
    for key, allowed in (choices or {}).items():
        if getattr(cfg, key) not in allowed:
            fail(f"{flag(key)} must be one of {', '.join(allowed)}, not {getattr(cfg, key)!r}")
    for key, minimum in (at_least or {}).items():
        if getattr(cfg, key) is not None and getattr(cfg, key) < minimum:
            fail(f"{flag(key)} must be at least {minimum}, got {getattr(cfg, key)}")
    for key in positive:
        if not getattr(cfg, key) > 0:
            fail(f"{flag(key)} must be positive, got {getattr(cfg, key)}")
    for key, off in (zero_is_off or {}).items():
        if getattr(cfg, key) is not None and getattr(cfg, key) < 0:
            fail(f"{flag(key)} must be 0 ({off}) or positive, got {getattr(cfg, key)}")


def check_tasks_per_process(world_size, **task_counts):
    """Every process needs at least one task of each kind."""
    for key, count in task_counts.items():
        if world_size > count:
            fail(f"{world_size} processes cannot share --{key.replace('_', '-')} {count}: "
                 f"start at most {count} processes")


class _HelpFormatter(argparse.RawDescriptionHelpFormatter):
    """Help lines wrapped between words only, never inside a flag such as --test-tasks."""

    def _split_lines(self, text, width):
        return textwrap.wrap(" ".join(text.split()), width, break_on_hyphens=False)


class OneLineParser(argparse.ArgumentParser):
    """argparse whose errors are the project's one line (exit code 2)."""

    def error(self, message):
        fail(message)


def _parse_bool(text):
    value = text.lower()
    if value in ("1", "true", "yes", "on"):
        return True
    if value in ("0", "false", "no", "off"):
        return False
    raise argparse.ArgumentTypeError(f"expected true or false, got {text!r}")


def _finite_float(text):
    value = float(text)
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"expected a finite number, got {text!r}")
    return value


def config_comments(script):
    """Help of each key of a script's `CONFIG = dict(...)` block, read with
    tokenize: {key: (section, comment)}. A key's comment is the one on its line,
    continued by comment lines below it indented deeper than the keys; comment
    lines at the keys' indentation name the section of the keys that follow."""
    with open(script, "rb") as f:
        tokens = list(tokenize.tokenize(f.readline))
    start = next(i for i, t in enumerate(tokens)
                 if t.type == tokenize.NAME and t.string == "CONFIG" and t.start[1] == 0)
    help_texts, key, key_row, key_column, depth, section, heading = {}, None, 0, 0, 0, "", []
    for i in range(start, len(tokens)):
        token = tokens[i]
        if token.type == tokenize.OP and token.string in "([{":
            depth += 1
        elif token.type == tokenize.OP and token.string in ")]}":
            depth -= 1
            if depth == 0:
                break
        elif depth == 1 and token.type == tokenize.NAME and tokens[i + 1].string == "=":
            section, heading = (" ".join(heading), []) if heading else (section, heading)
            key, key_row, key_column = token.string, token.start[0], token.start[1]
            help_texts[key] = (section, "")
        elif depth == 1 and token.type == tokenize.COMMENT:
            text = token.string.lstrip("#").strip()
            if key is not None and not heading and (token.start[0] == key_row or token.start[1] > key_column):
                help_texts[key] = (section, f"{help_texts[key][1]} {text}".strip())
            else:
                heading.append(text)
    return help_texts


def paper_types(paper_defaults):
    """The type of each setting whose default, None, stands for a paper's value;
    paper_defaults: {(family, N-way): {setting: value}}."""
    return {key: type(value) for values in paper_defaults.values() for key, value in values.items()}


def paper_values(paper_defaults):
    """--help text of each setting whose default is a paper's value: those values."""
    texts = {}
    for key in paper_types(paper_defaults):
        families = {}
        for (family, n_way), values in paper_defaults.items():
            if key in values:
                shown = f"{values[key]:,}" if isinstance(values[key], int) else f"{values[key]:g}"
                families.setdefault(family, []).append(f"{n_way}-way {shown}")
        texts[key] = "the paper's: " + "; ".join(f"{family} {', '.join(v)}" for family, v in families.items())
    return texts


def answer_help(script, description, argv):
    """With -h or --help in argv, print the script's --help and exit, reading its
    CONFIG and PAPER_DEFAULTS from its source: called before the script's other
    imports, so that --help waits for no framework to load."""
    if not {"-h", "--help"} & set(argv):
        return
    with open(script) as f:
        tree = ast.parse(f.read())
    found = {}  # the module's top-level values made of literals, dict(...) and the values before them
    for node in tree.body:
        if isinstance(node, ast.Assign):
            try:
                value = eval(compile(ast.Expression(node.value), script, "eval"),
                             {"__builtins__": {}, "dict": dict, **found})
            except Exception:  # anything else (an import's function, ...) is not needed here
                continue
            for target in node.targets:
                if isinstance(target, ast.Name):
                    found[target.id] = value
                elif isinstance(target, ast.Tuple) and isinstance(value, tuple) and len(value) == len(target.elts):
                    found.update({t.id: v for t, v in zip(target.elts, value) if isinstance(t, ast.Name)})
    paper = found.get("PAPER_DEFAULTS", {})
    parse_config(found["CONFIG"], argv, description, types=paper_types(paper), comments=config_comments(script),
                 none_means=paper_values(paper))


def parse_config(defaults, argv, description="", types=None, comments=None, none_means=None):
    """Override the plain values of `defaults` with `--name value` arguments
    (underscores written as dashes). A flag's type is its default's type, or
    types[key] for a default of None; a boolean may also be given bare
    (`--resume`); --help shows each flag in its section with its comment
    (config_comments) and default (none_means[key] for a default of None).
    Returns the config as a namespace and the set of keys given on the command line."""
    parser = OneLineParser(description=description, argument_default=argparse.SUPPRESS,
                            formatter_class=_HelpFormatter)
    sections = {"": parser}
    for key, default in defaults.items():
        flag = "--" + key.replace("_", "-")
        section, comment = (comments or {}).get(key, ("", ""))
        if section not in sections:
            sections[section] = parser.add_argument_group(section)
        shown = (none_means or {}).get(key, "the paper's value") if default is None else repr(default)
        text = f"{comment} (default: {shown})".strip().replace("%", "%%")
        if isinstance(default, bool):
            sections[section].add_argument(flag, type=_parse_bool, nargs="?", const=True, metavar="BOOL", help=text)
        else:
            value_type = type(default) if default is not None else types[key]
            sections[section].add_argument(flag, type=_finite_float if value_type is float else value_type,
                                           metavar=value_type.__name__.upper(), help=text)
    given = vars(parser.parse_args(argv))
    return SimpleNamespace(**{**defaults, **given}), set(given)
