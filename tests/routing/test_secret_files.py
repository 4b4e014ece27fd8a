"""Secrets from files (``*_file``) and lists of secrets (rotation); allow_ips and match.subscriptions
checked with file:line; the holder notices a changed secret file."""

from __future__ import annotations

import base64
import textwrap
from pathlib import Path

from relay.routing.holder import ConfigHolder
from relay.routing.loader import check_config, load_config
from relay.routing.rules import route
from tests.commands import relay_cli

WHSEC_OLD = "whsec_" + base64.b64encode(b"old-webhook-secret-0123456789ab").decode()
WHSEC_NEW = "whsec_" + base64.b64encode(b"new-webhook-secret-0123456789ab").decode()


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "forwarding.yaml"
    path.write_text(textwrap.dedent(text))
    return path


def test_token_file_is_read_with_one_trailing_newline_stripped_and_lists_give_several_tokens(tmp_path: Path) -> None:
    secrets = tmp_path / "secrets"
    secrets.mkdir()
    (secrets / "gfx").write_text("file-token-1\n")
    (secrets / "hook_new").write_text(WHSEC_NEW + "\r\n")
    path = write(tmp_path, f"""
        subscriptions:
          - name: greenflux
            token_env: [OLD_TOKEN, NEW_TOKEN]
            token_file: secrets/gfx           # relative to forwarding.yaml
            cpos: ["NL*GFX"]
        stream_clients:
          - {{name: billing, token_file: {secrets / "gfx"}x, cpos: ["*"]}}
        targets:
          - name: hook
            type: webhook
            url: https://hook.example/in
            secret_env: HOOK_OLD
            secret_file: [secrets/hook_new]
    """)
    (secrets / "gfx").with_name("gfxx").write_text("stream-token\n\n")  # two newlines: one stays, refused
    problems = check_config(path, {"OLD_TOKEN": "old-token", "NEW_TOKEN": "new-token", "HOOK_OLD": WHSEC_OLD})
    assert problems == [f"{path}:8: stream_clients[0] (billing).token_file: secret file {secrets / 'gfxx'} must hold one line"]
    (secrets / "gfxx").write_text("stream-token")
    cfg = load_config(path, {"OLD_TOKEN": "old-token", "NEW_TOKEN": "new-token", "HOOK_OLD": WHSEC_OLD})
    (sub,) = cfg.subscriptions
    assert [t.reveal() for t in sub.tokens] == ["old-token", "new-token", "file-token-1"]
    for token in ("old-token", "new-token", "file-token-1"):
        assert cfg.subscription_for_token(token) is sub
    assert cfg.subscription_for_token("file-token-1\n") is None
    assert cfg.stream_client_for_token("stream-token") is cfg.stream_clients[0]
    assert [s.reveal() for s in cfg.targets[0].secrets] == [WHSEC_OLD, WHSEC_NEW]
    assert set(cfg.secret_files) == {str(secrets / "gfx"), str(secrets / "gfxx"), str(secrets / "hook_new")}


def test_missing_unreadable_and_empty_secret_files_are_named_never_shown(tmp_path: Path) -> None:
    (tmp_path / "empty").write_text("\n")
    (tmp_path / "hook").write_text("not-a-whsec-value-3f9a\n")
    path = write(tmp_path, """
        subscriptions:
          - {name: a, token_file: /nonexistent/run/secrets/a, cpos: ["*"]}
          - {name: b, token_file: empty, cpos: ["*"]}
          - {name: c, token_file: ., cpos: ["*"]}
          - {name: d, cpos: ["*"]}
        targets:
          - {name: t, type: webhook, url: "https://x.example", secret_file: hook}
          - {name: p, type: ocpi, url: "https://x.example", token_file: [empty, hook]}
    """)
    problems = check_config(path, {})
    assert f"{path}:3: subscriptions[0] (a).token_file: cannot read secret file /nonexistent/run/secrets/a: " \
           "No such file or directory" in problems
    assert f"{path}:4: subscriptions[1] (b).token_file: secret file empty is empty" in problems
    assert f"{path}:5: subscriptions[2] (c).token_file: cannot read secret file .: Is a directory" in problems
    assert f"{path}:6: subscriptions[3] (d): missing required key 'token_env'" in problems
    assert f"{path}:8: targets[0] (t).secret_file: file hook must hold a secret of the form whsec_<base64>" in problems
    assert "not-a-whsec-value-3f9a" not in "\n".join(problems)


def test_relay_check_config_names_a_missing_secret_file(tmp_path: Path) -> None:
    (tmp_path / "present").write_text("a-secret-that-must-not-show-9c1\n")
    path = write(tmp_path, """
        subscriptions:
          - name: greenflux
            token_file: [present, missing/greenflux_token]
            cpos: ["NL*GFX"]
    """)
    res = relay_cli("check-config", str(path))
    assert res.returncode == 1
    assert f"{path}:4: subscriptions[0] (greenflux).token_file: cannot read secret file missing/greenflux_token: " \
           "No such file or directory" in res.stderr
    assert "a-secret-that-must-not-show-9c1" not in res.stdout + res.stderr


def test_allow_ips_and_match_subscriptions_are_checked_at_their_line(tmp_path: Path) -> None:
    path = write(tmp_path, """
        subscriptions:
          - name: greenflux
            token_env: T1
            cpos: ["NL*GFX"]
            allow_ips: ["198.51.100.0/24", "10.0.0.1/8", "not-a-network", "2001:db8::/32"]
        targets:
          - {name: p, type: ocpi, url: "https://x.example", token_env: T2}
        rules:
          - name: r
            match: {subscriptions: [greenflux, greenflux-acceptance]}
            to: [p]
    """)
    problems = check_config(path, {"T1": "t-one", "T2": "t-two"})
    assert len(problems) == 3, problems
    assert problems[0].startswith(f"{path}:6: subscriptions[0] (greenflux).allow_ips: '10.0.0.1/8' is not a network")
    assert problems[1].startswith(f"{path}:6: subscriptions[0] (greenflux).allow_ips: 'not-a-network' is not a network")
    assert problems[2] == f"{path}:11: rules[0] (r).match.subscriptions: unknown subscription 'greenflux-acceptance' " \
                          "(known: greenflux)"


def test_rules_match_by_subscription(tmp_path: Path) -> None:
    path = write(tmp_path, """
        subscriptions:
          - {name: greenflux, token_env: T1, cpos: ["NL*GFX"]}
          - {name: greenflux-acceptance, token_env: T2, cpos: ["NL*GFX"]}
        targets:
          - {name: p, type: ocpi, url: "https://x.example", token_env: T3}
        rules:
          - {name: production-only, match: {subscriptions: [greenflux]}, to: [p]}
    """)
    cfg = load_config(path, {"T1": "t-one", "T2": "t-two", "T3": "t-three"})
    assert [r.name for r, _ in route(cfg, "locations", "put", "NL", "GFX", {}, "greenflux")] == ["production-only"]
    assert route(cfg, "locations", "put", "NL", "GFX", {}, "greenflux-acceptance") == ()


def test_holder_notices_a_changed_secret_file_and_reloads_it(tmp_path: Path) -> None:
    token = tmp_path / "token"
    token.write_text("first-token\n")
    path = write(tmp_path, """
        subscriptions:
          - {name: greenflux, token_file: token, cpos: ["NL*GFX"]}
    """)
    holder = ConfigHolder(str(path), {})
    assert not holder.changed_on_disk()
    token.write_text("second-token-longer\n")
    assert holder.changed_on_disk()
    assert holder.reload()
    assert holder().subscription_for_token("second-token-longer") is not None
    assert holder().subscription_for_token("first-token") is None
    assert not holder.changed_on_disk()
    token.unlink()  # a vanished secret: the reload is refused and the last good config stays
    assert holder.changed_on_disk()
    assert not holder.reload()
    assert holder().subscription_for_token("second-token-longer") is not None
    assert not holder.changed_on_disk()
