"""``--help`` everywhere: every command, argument and option of the whole tree says what it
is for, defaults are shown, and the top-level help is written for users."""

from __future__ import annotations

from collections.abc import Iterator

import click
import pytest

from fleetctl.cli import fleet, main, resolve

pytestmark = pytest.mark.unit


def _tree(
    command: click.Command, ctx: click.Context, path: tuple[str, ...] = ()
) -> Iterator[tuple[tuple[str, ...], click.Command, click.Context]]:
    yield path, command, ctx
    if isinstance(command, click.Group):
        for name in command.list_commands(ctx):
            sub = command.get_command(ctx, name)
            assert sub is not None
            yield from _tree(sub, click.Context(sub, info_name=name, parent=ctx), (*path, name))


def _commands() -> list[tuple[tuple[str, ...], click.Command, click.Context]]:
    root = click.Context(fleet, info_name="fleet", **fleet.context_settings)
    return list(_tree(fleet, root))


def _flat(text: str) -> str:
    return " ".join(text.split())  # help is wrapped to the terminal: compare words


def _own_params(command: click.Command, ctx: click.Context) -> list[click.Parameter]:
    helper = command.get_help_option(ctx)  # click's own --help
    return [p for p in command.get_params(ctx) if p is not helper]


def test_the_tree_has_every_command() -> None:
    paths = {" ".join(path) for path, _, _ in _commands()}
    assert paths >= {
        "demo",
        "kafka start",
        "kafka stop",
        "kafka status",
        "topics apply",
        "orchestrator",
        "worker",
        "submit",
        "tail",
        "cancel",
        "dlq list",
        "dlq show",
        "dlq redrive",
        "budget top-up",
        "market",
        "market capacity",
        "market revoke",
    }


def test_every_command_argument_and_option_has_help_text() -> None:
    undescribed = []
    for path, command, ctx in _commands():
        name = " ".join(("fleet", *path))
        if not (command.help or "").strip():
            undescribed.append(name)
        if path and not command.get_short_help_str().strip():
            undescribed.append(f"{name} (short help)")
        for param in _own_params(command, ctx):
            if not (getattr(param, "help", None) or "").strip():
                undescribed.append(f"{name} {param.human_readable_name}")
    assert undescribed == []


def _shown_default(param: click.Option) -> str | None:
    """The default an option's help must show, or None if it has none worth showing."""
    default = param.default
    if not isinstance(default, int | float | str) or isinstance(default, bool) or default == "":
        return None  # none (click's UNSET or None), a flag, or an empty repeatable option
    return str(default)


def test_every_default_is_shown_in_the_help() -> None:
    hidden = []
    for path, command, ctx in _commands():
        text = _flat(command.get_help(ctx))
        for param in _own_params(command, ctx):
            if isinstance(param, click.Option):
                default = _shown_default(param)
                if default is not None and f"[default: {default}" not in text:
                    hidden.append(f"fleet {' '.join(path)} {param.opts[0]} ({default})")
    assert hidden == []


@pytest.mark.parametrize(
    ("argv", "shown"),
    [
        (["submit"], "--timeout SECONDS how long --wait waits [default: 300"),
        (["cancel"], "[default: 60"),
        (["worker"], "--concurrency N tasks this process runs at once [default: 8"),
        (["worker"], "[default: 30"),
        (["demo"], "[default: 240"),
        (["market"], "[default: 15"),
        (["budget", "top-up"], "[default: 15"),
        (["orchestrator"], "default: FLEET_ORCHESTRATOR_GUARANTEE, else exactly_once"),
    ],
)
def test_the_defaults_users_asked_about(
    argv: list[str], shown: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main([*argv, "--help"]) == 0
    assert shown in _flat(capsys.readouterr().out)


def test_the_top_level_help_is_for_users(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--help"]) == 0
    text = capsys.readouterr().out
    assert "``" not in text  # no developer docstring markup
    assert "AI agents" in text and "Start here" in text
    start = text.index("Start here")
    firsts = [
        "fleet demo",
        "fleet kafka start",
        "fleet orchestrator",
        "fleet worker",
        "fleet submit",
    ]
    assert [text.index(c, start) for c in firsts] == sorted(text.index(c, start) for c in firsts)
    # The command list follows a newcomer's order too, not A-Z.
    listed = text[text.index("Commands:") :].split()
    assert listed.index("demo") < listed.index("submit") < listed.index("dlq")


def test_help_needs_no_valid_environment(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("FLEET_TOPIC_PREFIX", "not a prefix!")  # any command refuses to run
    assert main(["worker", "--help"]) == 0
    assert "--concurrency" in capsys.readouterr().out
    assert main(["kafka", "status"]) == 2
    assert "FLEET_TOPIC_PREFIX" in capsys.readouterr().err


def test_a_usage_error_is_exit_2_and_names_the_argument(
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert main(["worker"]) == 2
    assert "Missing option '--app'" in capsys.readouterr().err
    assert main(["nonsense"]) == 2
    assert "No such command 'nonsense'" in capsys.readouterr().err


def test_resolve_parses_without_running() -> None:
    parsed = resolve(["worker", "--app", "workers.examples:app"])
    assert parsed.path == ("worker",)
    assert parsed.params["concurrency"] == 8 and parsed.params["app"] == "workers.examples:app"
    assert resolve(["market", "--json"]).params["as_json"] is True
    assert resolve(["market", "capacity", "gpu", "3"]).params == {"pool": "gpu", "units": 3}
    with pytest.raises(click.UsageError):
        resolve(["topics", "remove"])
