"""The README's examples work when pasted: configs validate, secrets are required, commands exist.

The README's shell blocks are read as a user would paste them: `export` lines give the
environment (evaluated by bash, so `$(python3 -c ...)` runs), every `courtyard` command
must parse with the real argument parsers, every `make` target must exist, and every file
named must be in the repository.
"""

from __future__ import annotations

import argparse
import importlib
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from gateway.cli import build_parser
from gateway.config import load_config
from simulators import SIMULATORS

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
EXAMPLES = sorted((ROOT / "examples").glob("*.yaml"))
REPO_DIRS = ("examples/", "scenarios/", "docs/", "drivers/", "schemas/", "bench/", "simulators/", "gateway/")


def shell_blocks(path: Path) -> list[str]:
    return re.findall(r"^```(?:sh|bash|shell)\n(.*?)^```", path.read_text(), re.S | re.M)


def readme_env() -> dict[str, str]:
    """The variables the README's shell blocks export, evaluated by bash in the repository folder."""
    exports = [line for block in shell_blocks(README) for line in block.splitlines()
               if line.startswith("export ")]
    assert exports, "the README exports the variables its examples need"
    script = "\n".join(exports) + "\nenv -0\n"
    out = subprocess.run(["bash", "-c", script], cwd=ROOT, capture_output=True, check=True,
                         env={"PATH": "/usr/bin:/bin", "HOME": str(ROOT)}).stdout
    names = {line.split("=", 1)[0].split()[1] for line in exports}
    env = dict(item.split("=", 1) for item in out.decode().split("\0") if "=" in item)
    return {k: v for k, v in env.items() if k in names}


def commands(block: str) -> list[list[str]]:
    """Simple commands of a shell block, split at `&`, `&&`, `;` and `|`, comments dropped."""
    out: list[list[str]] = []
    for line in block.splitlines():
        if not line.strip() or line.lstrip().startswith("export "):
            continue
        lex = shlex.shlex(line, posix=True, punctuation_chars="&;|")
        lex.whitespace_split = True
        current: list[str] = []
        for token in lex:
            if token and set(token) <= set("&;|"):
                if current:
                    out.append(current)
                current = []
            else:
                current.append(token)
        if current:
            out.append(current)
    return out


def expand(token: str, env: dict[str, str]) -> str:
    return re.sub(r"\$\{?(\w+)\}?", lambda m: env.get(m.group(1), m.group(0)), token)


def sub_parsers() -> dict[str, argparse.ArgumentParser]:
    for action in build_parser()._actions:
        if isinstance(action, argparse._SubParsersAction):
            return dict(action.choices)
    raise AssertionError("no subcommands")


def simulator_parser(name: str) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=f"courtyard simulate {name}")
    importlib.import_module(SIMULATORS[name]).add_arguments(parser)
    return parser


def parse_or_fail(parser: argparse.ArgumentParser, args: list[str], what: str) -> argparse.Namespace:
    try:
        return parser.parse_args(args)
    except SystemExit:
        pytest.fail(f"`{what}` does not parse: {' '.join(args)}")


def check_courtyard_command(argv: list[str]) -> None:
    """Parse a full `courtyard ...` command exactly as the CLI would."""
    args = parse_or_fail(build_parser(), argv, "courtyard")
    if args.command == "simulate" and args.simulator:
        parse_or_fail(simulator_parser(args.simulator), args.options, f"courtyard simulate {args.simulator}")


def test_every_example_validates_with_the_readme_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    env = readme_env()
    assert {"LPR_TOKEN", "ACCESS_HASH_KEY", "MQTT_PORT", "COURTYARD_DATA"} <= set(env)
    assert len(env["LPR_TOKEN"]) >= 24 and len(env["ACCESS_HASH_KEY"]) >= 32, "generated, not typed in"
    for name in ("MQTT_HOST", "LPR_TOKEN", "ACCESS_HASH_KEY", "INFLUX_URL"):
        monkeypatch.delenv(name, raising=False)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    assert len(EXAMPLES) == 5
    for path in EXAMPLES:
        cfg = load_config(path)
        assert cfg.devices, path
        assert cfg.mqtt.port == int(env["MQTT_PORT"]), "the README's broker, not whatever is on 1883"
        assert str(cfg.outbox.path).startswith(env["COURTYARD_DATA"])
    plates = load_config(ROOT / "examples/plate_reader.yaml")
    tokens = [d.auth.token for d in plates.devices]  # type: ignore[attr-defined]
    assert {getattr(t, "get_secret_value", lambda t=t: t)() for t in tokens} == {env["LPR_TOKEN"]}


@pytest.mark.parametrize(("example", "variable"), [("plate_reader", "LPR_TOKEN"), ("access_gate", "ACCESS_HASH_KEY")])
def test_a_missing_secret_is_named_with_its_line(example: str, variable: str) -> None:
    env = {k: v for k, v in readme_env().items() if k != variable}
    path = f"examples/{example}.yaml"
    res = subprocess.run([sys.executable, "-m", "gateway", "validate", "-c", path], cwd=ROOT, capture_output=True,
                         text=True, env={"PATH": "/usr/bin:/bin"} | env, check=False)
    assert res.returncode == 1
    lines = [n for n, text in enumerate((ROOT / path).read_text().splitlines(), 1) if "${" + variable + "}" in text]
    assert len(lines) == 2
    for line in lines:
        assert re.search(rf"^{re.escape(path)}:{line}: devices\[\d\]\.\S+: environment variable {variable} "
                         "is not set and has no default$", res.stderr, re.M), res.stderr
    if example == "plate_reader":  # the README quotes this very message
        quoted = re.search(r"`(examples/plate_reader\.yaml:\d+: [^`]+)`", README.read_text())
        assert quoted and " ".join(quoted.group(1).split()) in res.stderr.splitlines()


def test_examples_have_no_public_secret_defaults() -> None:
    secret = re.compile(r"\$\{(\w*(?:TOKEN|KEY|SECRET|PASSWORD)\w*):-([^}]+)\}")
    for path in EXAMPLES:
        text = path.read_text()
        assert "change-me" not in text, path
        assert not secret.findall(text), f"{path.name}: a secret with a public default: {secret.findall(text)}"


def test_readme_shell_blocks_use_real_commands_files_and_flags() -> None:
    env = readme_env()
    targets = set(re.findall(r"^([A-Za-z][\w-]*):", (ROOT / "Makefile").read_text(), re.M))
    seen: set[str] = set()
    for block in shell_blocks(README):
        for cmd in commands(block):
            argv = [expand(t, env) for t in cmd]
            seen.add(argv[0])
            if argv[0] == "courtyard":
                check_courtyard_command(argv[1:])
            elif argv[0] == "make":
                assert set(argv[1:]) <= targets, f"unknown make target in {argv}"
            for token in argv:
                if token.startswith(REPO_DIRS):
                    assert (ROOT / token).exists(), f"README names {token}, which does not exist"
    assert {"courtyard", "make", "mosquitto", "mosquitto_sub", "kill"} <= seen


def _flags_exist(snippet: str) -> None:
    """Every option in a `courtyard ...` snippet is one its (sub)command accepts."""
    words = [w.strip("[]") for w in shlex.split(snippet.replace("[", " ").replace("]", " "), posix=True)]
    assert words[0] == "courtyard"
    parsers = sub_parsers()
    parser = parsers[words[1]]
    if words[1] == "simulate" and len(words) > 2 and words[2] in SIMULATORS:
        parser = simulator_parser(words[2])
    nested = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    if nested and len(words) > 2 and words[2] in nested[0].choices:  # `courtyard rules test ...`
        parser = nested[0].choices[words[2]]
    known = set(parser._option_string_actions)
    for word in words[2:]:
        if word.startswith("-"):
            assert word.split("=", 1)[0] in known, f"`{snippet}`: {word} is not an option of courtyard {words[1]}"


def test_every_documented_courtyard_command_uses_real_flags() -> None:
    docs = [README, *sorted((ROOT / "docs").glob("*.md"))]
    checked = 0
    for path in docs:
        text = path.read_text()
        snippets = re.findall(r"`(courtyard [^`]+)`", text)
        for block in shell_blocks(path):
            snippets += [" ".join(cmd) for cmd in commands(block) if cmd[0] == "courtyard"]
        for snippet in snippets:
            if snippet.split()[1] in sub_parsers():
                _flags_exist(snippet)
                checked += 1
    assert checked >= 20
