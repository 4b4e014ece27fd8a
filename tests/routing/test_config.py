"""forwarding.yaml loading: typed objects, every problem with file:line, secrets only from env."""

from __future__ import annotations

import base64
import json
import textwrap
from pathlib import Path

import pytest

import relay.routing.tokens as tokens_module
from relay.errors import ConfigError
from relay.ocpi.paths import MODULES
from relay.routing.describe import describe
from relay.routing.loader import check_config, load_config
from relay.routing.model import CpoPattern, RoutingConfig, cpo_matches, format_cpo, parse_cpo

SHIPPED = Path(__file__).resolve().parents[2] / "forwarding.yaml"
WHSEC = "whsec_" + base64.b64encode(b"0123456789abcdef0123456789abcdef").decode()
ENV = {
    "RELAY_TOKEN_GREENFLUX": "gfx-token-7f3a",
    "RELAY_TOKEN_GREENFLUX_ACCEPTANCE": "gfx-acceptance-token-2b9e",
    "RELAY_TOKEN_OTHER": "other-token-91c2",
    "RELAY_STREAM_TOKEN_BILLING": "stream-billing-55d1",
    "RELAY_RESEARCH_SECRET": WHSEC,
    "RELAY_PARTNER_TOKEN": "partner-token-3e8b",
    "RELAY_PSEUDO_KEY": "pseudo-key-a9f0c6",
    "RELAY_TOKEN_GREENFLUX_PULL": "pull-token-b4d2",
    "RELAY_RESEARCH_API_KEY": "research-api-key-5c1d",
}

VALID = """\
subscriptions:
  - name: greenflux
    token_env: RELAY_TOKEN_GREENFLUX
    cpos: ["NL*GFX"]
    default_cpo: "NL*GFX"
  - name: other
    token_env: RELAY_TOKEN_OTHER
    cpos: ["DE*ABC", "**XYZ"]
    modules: [locations]
    accept_base64: true
    strict: true
stream_clients:
  - name: billing
    token_env: RELAY_STREAM_TOKEN_BILLING
    modules: [sessions, cdrs]
    cpos: ["*"]
targets:
  - name: research
    type: webhook
    url: https://research.example.nl/hook/
    secret_env: RELAY_RESEARCH_SECRET
    rate_limit: 2.5
    headers: {X-Team: data}
  - name: partner
    type: ocpi
    url: http://127.0.0.1:9001/ocpi/emsp/2.1.1
    token_env: RELAY_PARTNER_TOKEN
    timeout: 5
    concurrency: 8
    max_attempts: 3
rules:
  - name: research-copy
    match:
      modules: [sessions, cdrs]
      cpos: ["NL*GFX"]
      actions: [PUT, post]
      conditions:
        - {field: status, eq: COMPLETED}
        - {field: location.evses.*.status, in: [AVAILABLE, CHARGING]}
    to: [research, partner]
    transform:
      - drop: [auth_id, meter_id]
      - pseudonymise: {fields: [id], key_env: RELAY_PSEUDO_KEY}
      - round: {fields: [location.coordinates.*], decimals: 2}
      - coarsen_time: {fields: [start_datetime], unit: day}
      - keep: [id, location]
pull:
  - name: greenflux-pull
    url: http://127.0.0.1:9002/ocpi/cpo/2.1.1
    token_env: RELAY_TOKEN_GREENFLUX_PULL
    interval: 1h
    default_cpo: "NL*GFX"
    page_limit: 50
"""


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "forwarding.yaml"
    path.write_text(textwrap.dedent(text))
    return path


def problems_of(tmp_path: Path, text: str, env: dict[str, str] | None = None) -> tuple[Path, list[str]]:
    path = write(tmp_path, text)
    return path, check_config(path, ENV if env is None else env)


def assert_problem(problems: list[str], path: Path, line: int, *words: str) -> None:
    prefix = f"{path}:{line}: "
    hits = [p for p in problems if p.startswith(prefix) and all(w in p for w in words)]
    assert hits, f"no problem at line {line} with {words} in:\n" + "\n".join(problems)


def enable_examples(text: str) -> str:
    """The shipped file with its disabled examples ("# " lines) switched on."""
    return "\n".join(line[2:] if line.startswith("# ") else line for line in text.splitlines()) + "\n"


# valid files


def test_valid_config_loads_into_typed_objects(tmp_path: Path) -> None:
    cfg = load_config(write(tmp_path, VALID), ENV)
    gfx, other = cfg.subscriptions
    assert gfx.name == "greenflux" and gfx.token.reveal() == "gfx-token-7f3a"
    assert gfx.cpos == (CpoPattern("NL", "GFX"),)
    assert gfx.modules == frozenset(MODULES)
    assert gfx.default_cpo == ("NL", "GFX")
    assert (gfx.accept_base64, gfx.strict) == (False, False)
    assert other.cpos == (CpoPattern("DE", "ABC"), CpoPattern("*", "XYZ"))
    assert other.modules == frozenset({"locations"}) and other.accept_base64 and other.strict
    assert cfg.stream_clients[0].cpos == (CpoPattern("*", "*"),)
    research, partner = cfg.targets
    assert research.url == "https://research.example.nl/hook"  # trailing slash removed
    assert research.secret is not None and research.secret.reveal() == WHSEC and research.token is None
    assert research.rate_limit == 2.5 and research.headers == (("X-Team", "data"),)
    assert partner.token is not None and partner.token.reveal() == "partner-token-3e8b" and partner.secret is None
    assert (partner.timeout, partner.concurrency, partner.max_attempts) == (5.0, 8, 3)
    assert cfg.target("partner") is partner and cfg.target("nope") is None
    (rule,) = cfg.rules
    assert rule.match.modules == frozenset({"sessions", "cdrs"})
    assert rule.match.actions == frozenset({"put", "post"})
    assert rule.match.conditions[1].value == ("AVAILABLE", "CHARGING")
    assert rule.to == ("research", "partner")
    assert [t.kind for t in rule.transform] == ["drop", "pseudonymise", "round", "coarsen_time", "keep"]
    assert rule.transform[1].key is not None and rule.transform[1].key.reveal() == "pseudo-key-a9f0c6"
    assert (rule.transform[2].decimals, rule.transform[3].unit) == (2, "day")
    (pull,) = cfg.pull
    assert pull.interval == 3600.0 and pull.modules == ("locations", "sessions", "cdrs", "tariffs")
    assert (pull.page_limit, pull.timeout, pull.default_cpo) == (50, 30.0, ("NL", "GFX"))
    assert cfg.path == str(tmp_path / "forwarding.yaml")


@pytest.mark.parametrize("text", ["", "# only a comment\n", "subscriptions:\ntargets: []\nrules:\n"])
def test_empty_file_or_sections_give_empty_config(tmp_path: Path, text: str) -> None:
    cfg = load_config(write(tmp_path, text), {})
    assert (cfg.subscriptions, cfg.stream_clients, cfg.targets, cfg.rules, cfg.pull) == ((), (), (), (), ())


@pytest.mark.parametrize(("value", "seconds"), [("30s", 30.0), ("15m", 900.0), ("1h", 3600.0), ("1d", 86400.0), ("90", 90.0), ("2.5", 2.5)])
def test_pull_interval_accepts_units_and_plain_seconds(tmp_path: Path, value: str, seconds: float) -> None:
    text = f"pull:\n  - {{name: p, url: 'http://x.example', token_env: RELAY_TOKEN_GREENFLUX, interval: {value}}}\n"
    assert load_config(write(tmp_path, text), ENV).pull[0].interval == seconds


def test_shipped_file_loads_with_only_the_greenflux_token() -> None:
    cfg = load_config(SHIPPED, {"RELAY_TOKEN_GREENFLUX": "t0k3n"})
    (sub,) = cfg.subscriptions
    assert sub.name == "greenflux" and sub.token.reveal() == "t0k3n"
    assert sub.cpos == (CpoPattern("NL", "GFX"),)
    assert sub.modules == frozenset(MODULES)
    assert sub.default_cpo == ("NL", "GFX")
    assert (cfg.stream_clients, cfg.targets, cfg.rules, cfg.pull) == ((), (), (), ())


def test_shipped_file_examples_are_valid_once_enabled(tmp_path: Path) -> None:
    cfg = load_config(write(tmp_path, enable_examples(SHIPPED.read_text())), ENV)
    assert [t.name for t in cfg.targets] == ["research", "partner"]
    assert {r.name for r in cfg.rules} >= {"research-charging", "research-notifications"}
    assert [c.name for c in cfg.stream_clients] == ["billing"]
    assert cfg.pull[0].interval == 900.0


# problems, each at its line


def test_unknown_keys_are_named_at_their_line_at_every_level(tmp_path: Path) -> None:
    path, problems = problems_of(tmp_path, """\
        subscription: []
        subscriptions:
          - name: a
            token_env: RELAY_TOKEN_GREENFLUX
            cpos: ["*"]
            colour: blue
        targets:
          - {name: t, type: ocpi, url: "http://x.example", token_env: RELAY_PARTNER_TOKEN, retries: 3}
        rules:
          - name: r
            to: [t]
            match: {module: [cdrs]}
            transform:
              - round: {fields: [a], decimals: 2, mode: up}
    """)
    assert_problem(problems, path, 1, "top level", "unknown key 'subscription'", "did you mean 'subscriptions'")
    assert_problem(problems, path, 6, "subscriptions[0] (a)", "unknown key 'colour'")
    assert_problem(problems, path, 8, "targets[0] (t)", "unknown key 'retries'")
    assert_problem(problems, path, 12, "rules[0] (r).match", "unknown key 'module'")
    assert_problem(problems, path, 14, "transform[0].round", "unknown key 'mode'")
    assert len(problems) == 5


def test_missing_required_keys_are_reported_at_the_entry(tmp_path: Path) -> None:
    path, problems = problems_of(tmp_path, """\
        subscriptions:
          - name: a
            token_env: RELAY_TOKEN_GREENFLUX
        targets:
          - name: t
            type: webhook
        pull:
          - name: p
            url: http://x.example
            token_env:
    """)
    assert_problem(problems, path, 2, "subscriptions[0] (a)", "missing required key 'cpos'")
    assert_problem(problems, path, 5, "targets[0] (t)", "missing required key 'url'")
    assert_problem(problems, path, 5, "targets[0] (t)", "needs 'secret_env'")
    assert_problem(problems, path, 10, "pull[0] (p)", "'token_env' has no value")


def test_wrong_types_are_reported_at_the_value(tmp_path: Path) -> None:
    path, problems = problems_of(tmp_path, """\
        subscriptions:
          - name: a
            token_env: RELAY_TOKEN_GREENFLUX
            cpos: "NL*GFX"
            accept_base64: "yes"
        targets:
          - name: t
            type: ocpi
            url: http://x.example
            token_env: RELAY_PARTNER_TOKEN
            concurrency: four
            timeout: -1
        rules: {name: r}
    """)
    assert_problem(problems, path, 4, "cpos", "expected a list")
    assert_problem(problems, path, 5, "accept_base64", "expected true or false")
    assert_problem(problems, path, 11, "concurrency", "whole number")
    assert_problem(problems, path, 12, "timeout", "above 0")
    assert_problem(problems, path, 13, "rules", "expected a list")


def test_unknown_module_names_are_reported(tmp_path: Path) -> None:
    path, problems = problems_of(tmp_path, """\
        subscriptions:
          - name: a
            token_env: RELAY_TOKEN_GREENFLUX
            cpos: ["*"]
            modules:
              - locations
              - sesions
    """)
    assert problems == [f"{path}:7: subscriptions[0] (a).modules: unknown module 'sesions' (known: {', '.join(MODULES)})"]


@pytest.mark.parametrize("pattern", ["NLGFX", "NL*GF", "N*GFX", "NL*GFX*", "*NL", "NL-GFX"])
def test_malformed_cpo_patterns_are_reported(tmp_path: Path, pattern: str) -> None:
    path, problems = problems_of(tmp_path, f"""\
        stream_clients:
          - name: a
            token_env: RELAY_STREAM_TOKEN_BILLING
            cpos: ["NL*GFX",
                   "{pattern}"]
    """)
    assert_problem(problems, path, 5, "stream_clients[0] (a).cpos", "malformed CPO pattern", repr(pattern))


def test_default_cpo_must_be_one_cpo_without_wildcard(tmp_path: Path) -> None:
    path, problems = problems_of(tmp_path, """\
        subscriptions:
          - {name: a, token_env: RELAY_TOKEN_GREENFLUX, cpos: ["*"], default_cpo: "NL*"}
    """)
    assert_problem(problems, path, 2, "default_cpo", "no wildcard")


@pytest.mark.parametrize(
    ("section", "entry"),
    [
        ("subscriptions", '{name: dup, token_env: RELAY_TOKEN_GREENFLUX, cpos: ["*"]}'),
        ("targets", '{name: dup, type: ocpi, url: "http://x.example", token_env: RELAY_PARTNER_TOKEN}'),
        ("rules", "{name: dup, to: [t]}"),
        ("pull", '{name: dup, url: "http://x.example", token_env: RELAY_TOKEN_GREENFLUX_PULL}'),
    ],
)
def test_duplicate_names_are_reported_at_the_second_entry(tmp_path: Path, section: str, entry: str) -> None:
    target = '  - {name: t, type: ocpi, url: "http://x.example", token_env: RELAY_PARTNER_TOKEN}\n'
    text = (
        (("targets:\n" + target) if section != "targets" else "")
        + f"{section}:\n  - {entry}\n\n  - {entry}\n"
        + ("  " + target.strip() + "\n" if section == "targets" else "")
    )
    path, problems = problems_of(tmp_path, text)
    line = text.splitlines().index(f"  - {entry}", text.splitlines().index(f"{section}:") + 2) + 1
    assert_problem(problems, path, line, section, "duplicate name 'dup'", f"first at line {line - 2}")


def test_two_subscriptions_with_the_same_token_are_refused(tmp_path: Path) -> None:
    path, problems = problems_of(tmp_path, """\
        subscriptions:
          - {name: a, token_env: RELAY_TOKEN_GREENFLUX, cpos: ["*"]}
          - {name: b, token_env: SAME_AS_GFX, cpos: ["*"]}
    """, {**ENV, "SAME_AS_GFX": ENV["RELAY_TOKEN_GREENFLUX"]})
    assert_problem(problems, path, 3, "subscriptions[1] (b)", "same token as subscriptions[0] (a)")
    assert not any(ENV["RELAY_TOKEN_GREENFLUX"] in p for p in problems)


def test_rule_to_unknown_target_and_empty_to_are_reported(tmp_path: Path) -> None:
    path, problems = problems_of(tmp_path, """\
        targets:
          - {name: research, type: ocpi, url: "http://x.example", token_env: RELAY_PARTNER_TOKEN}
        rules:
          - name: r1
            to:
              - research
              - reserch
          - name: r2
            to: []
    """)
    assert_problem(problems, path, 7, "rules[0] (r1).to", "unknown target 'reserch'")
    assert_problem(problems, path, 9, "rules[1] (r2).to", "empty")


def test_unknown_target_type_is_reported(tmp_path: Path) -> None:
    path, problems = problems_of(tmp_path, """\
        targets:
          - name: t
            type: kafka
            url: http://x.example
    """)
    assert problems == [f"{path}:3: targets[0] (t).type: unknown target type 'kafka' (expected webhook or ocpi)"]


@pytest.mark.parametrize("url", ["ftp://x.example/hook", "x.example/hook", "http://", "https://user:pw@x.example"])
def test_urls_must_be_http_or_https_without_credentials(tmp_path: Path, url: str) -> None:
    path, problems = problems_of(tmp_path, f"""\
        pull:
          - name: p
            token_env: RELAY_TOKEN_GREENFLUX_PULL
            url: "{url}"
    """)
    assert_problem(problems, path, 4, "pull[0] (p).url")
    assert not any("pw@" in p for p in problems)


def test_missing_env_var_is_named_without_any_value(tmp_path: Path) -> None:
    path, problems = problems_of(tmp_path, """\
        subscriptions:
          - name: a
            token_env: RELAY_TOKEN_NOT_THERE
            cpos: ["*"]
          - name: b
            token_env: RELAY_TOKEN_EMPTY
            cpos: ["*"]
    """, {**ENV, "RELAY_TOKEN_EMPTY": "  "})
    assert problems == [
        f"{path}:3: subscriptions[0] (a).token_env: env var RELAY_TOKEN_NOT_THERE is not set",
        f"{path}:6: subscriptions[1] (b).token_env: env var RELAY_TOKEN_EMPTY is empty",
    ]


@pytest.mark.parametrize("secret", ["plain-shared-secret", "whsec_not*base64!", "whsec_"])
def test_webhook_secret_must_be_whsec_base64_and_is_never_shown(tmp_path: Path, secret: str) -> None:
    path, problems = problems_of(tmp_path, """\
        targets:
          - name: research
            type: webhook
            url: https://x.example/hook
            secret_env: RELAY_RESEARCH_SECRET
    """, {"RELAY_RESEARCH_SECRET": secret})
    assert problems == [
        f"{path}:5: targets[0] (research).secret_env: env var RELAY_RESEARCH_SECRET must hold a secret of the form whsec_<base64>"
    ]


def test_secret_key_of_the_other_target_type_is_reported(tmp_path: Path) -> None:
    path, problems = problems_of(tmp_path, """\
        targets:
          - name: research
            type: webhook
            url: https://x.example/hook
            secret_env: RELAY_RESEARCH_SECRET
            token_env: RELAY_PARTNER_TOKEN
    """)
    assert problems == [f"{path}:6: targets[0] (research).token_env: not used by a webhook target (it takes secret_env)"]


def test_inline_secrets_are_refused_and_never_echoed(tmp_path: Path) -> None:
    path, problems = problems_of(tmp_path, """\
        subscriptions:
          - name: a
            token: inline-token-value
            cpos: ["*"]
        targets:
          - name: t
            type: webhook
            url: https://x.example/hook
            secret: whsec_aW5saW5lLXNlY3JldA==
        rules:
          - name: r
            to: [t]
            transform:
              - pseudonymise: {fields: [id], key: inline-key-value}
    """)
    assert_problem(problems, path, 3, "'token'", "secrets must come from an env var")
    assert_problem(problems, path, 9, "'secret'", "secrets must come from an env var")
    assert_problem(problems, path, 14, "'key'", "secrets must come from an env var")
    joined = "\n".join(problems)
    assert "inline-token-value" not in joined and "aW5saW5l" not in joined and "inline-key-value" not in joined


def test_unknown_transform_kind_is_reported(tmp_path: Path) -> None:
    path, problems = problems_of(tmp_path, """\
        targets:
          - {name: t, type: ocpi, url: "http://x.example", token_env: RELAY_PARTNER_TOKEN}
        rules:
          - name: r
            to: [t]
            transform:
              - drop: [auth_id]
              - hash: [id]
              - {drop: [a], keep: [b]}
    """)
    assert_problem(problems, path, 8, "transform[1]", "unknown transform 'hash'", "pseudonymise")
    assert_problem(problems, path, 9, "transform[2]", "expected one transform")


def test_bad_field_paths_in_transforms_and_conditions_are_reported(tmp_path: Path) -> None:
    path, problems = problems_of(tmp_path, """\
        targets:
          - {name: t, type: ocpi, url: "http://x.example", token_env: RELAY_PARTNER_TOKEN}
        rules:
          - name: r
            to: [t]
            match:
              conditions:
                - {field: "evses[0].status", eq: AVAILABLE}
            transform:
              - drop:
                  - location..address
                  - cdr_token.uid
              - coarsen_time: {fields: ["start-time"], unit: hour}
    """)
    assert_problem(problems, path, 8, "conditions[0].field", "bad field path 'evses[0].status'")
    assert_problem(problems, path, 11, "transform[0].drop", "bad field path 'location..address'")
    assert_problem(problems, path, 13, "coarsen_time.fields", "bad field path 'start-time'")
    assert len(problems) == 3


def test_bad_condition_operators_and_values_are_reported(tmp_path: Path) -> None:
    path, problems = problems_of(tmp_path, """\
        targets:
          - {name: t, type: ocpi, url: "http://x.example", token_env: RELAY_PARTNER_TOKEN}
        rules:
          - name: r
            to: [t]
            match:
              conditions:
                - {field: status}
                - {field: status, eq: A, ne: B}
                - {field: status, in: ACTIVE}
                - {field: status, exists: maybe}
                - {field: status, like: ACT}
    """)
    assert_problem(problems, path, 8, "conditions[0]", "exactly one operator")
    assert_problem(problems, path, 9, "conditions[1]", "exactly one operator")
    assert_problem(problems, path, 10, "conditions[2].in", "a list")
    assert_problem(problems, path, 11, "conditions[3].exists", "true or false")
    assert_problem(problems, path, 12, "conditions[4]", "unknown key 'like'")


@pytest.mark.parametrize("interval", ["15x", "0m", "-5", "fast", "''", "[1]"])
def test_bad_interval_strings_are_reported(tmp_path: Path, interval: str) -> None:
    path, problems = problems_of(tmp_path, f"""\
        pull:
          - name: p
            url: http://x.example
            token_env: RELAY_TOKEN_GREENFLUX_PULL
            interval: {interval}
    """)
    assert_problem(problems, path, 5, "pull[0] (p).interval", "bad interval")


def test_bad_transform_options_are_reported(tmp_path: Path) -> None:
    path, problems = problems_of(tmp_path, """\
        targets:
          - {name: t, type: ocpi, url: "http://x.example", token_env: RELAY_PARTNER_TOKEN}
        rules:
          - name: r
            to: [t]
            transform:
              - round: {fields: [kwh], decimals: 1.5}
              - coarsen_time: {fields: [start_datetime], unit: week}
              - pseudonymise: {fields: [id]}
              - keep: []
    """)
    assert_problem(problems, path, 7, "round.decimals", "whole number")
    assert_problem(problems, path, 8, "coarsen_time.unit", "'week'")
    assert_problem(problems, path, 9, "transform[2].pseudonymise", "missing required key 'key_env'")
    assert_problem(problems, path, 10, "transform[3].keep", "empty")


def test_duplicate_yaml_keys_and_syntax_errors_name_their_line(tmp_path: Path) -> None:
    path, problems = problems_of(tmp_path, """\
        subscriptions:
          - name: a
            token_env: RELAY_TOKEN_GREENFLUX
            cpos: ["*"]
            cpos: ["NL*GFX"]
    """)
    assert_problem(problems, path, 5, "duplicate key 'cpos'", "first at line 4")
    path, problems = problems_of(tmp_path, "subscriptions:\n  - name: a\n   bad: [\n")
    assert len(problems) == 1 and problems[0].startswith(f"{path}:3: YAML syntax")


def test_unreadable_file_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as err:
        load_config(tmp_path / "missing.yaml", {})
    assert err.value.problems[0].startswith(f"{tmp_path / 'missing.yaml'}:1: cannot read the file")


def test_all_problems_are_raised_together_in_one_config_error(tmp_path: Path) -> None:
    path = write(tmp_path, """\
        subscriptions:
          - {name: a, token_env: NOPE_1, cpos: ["*"]}
          - {name: b, token_env: NOPE_2, cpos: ["bad"]}
    """)
    with pytest.raises(ConfigError) as err:
        load_config(path, {})
    assert [p.split(":", 2)[1] for p in err.value.problems] == ["2", "3", "3"]
    assert str(err.value) == "\n".join(err.value.problems)


def test_check_config_is_empty_for_a_valid_file(tmp_path: Path) -> None:
    assert check_config(write(tmp_path, VALID), ENV) == []


# token lookup


def test_subscription_for_token_finds_the_owner(tmp_path: Path) -> None:
    cfg = load_config(write(tmp_path, VALID), ENV)
    assert cfg.subscription_for_token("gfx-token-7f3a") is cfg.subscriptions[0]
    assert cfg.subscription_for_token("other-token-91c2") is cfg.subscriptions[1]
    assert cfg.subscription_for_token("gfx-token-7f3") is None
    assert cfg.subscription_for_token("") is None
    assert cfg.subscription_for_token("tökén") is None  # non-ASCII must not raise


def test_base64_token_is_accepted_only_where_the_subscription_allows_it(tmp_path: Path) -> None:
    cfg = load_config(write(tmp_path, VALID), ENV)
    b64_gfx = base64.b64encode(b"gfx-token-7f3a").decode()
    b64_other = base64.b64encode(b"other-token-91c2").decode()
    assert cfg.subscription_for_token(b64_other) is cfg.subscriptions[1]
    assert cfg.subscription_for_token(b64_gfx) is None


def test_token_lookup_compares_every_token_even_after_a_match(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    cfg = load_config(write(tmp_path, VALID), ENV)
    calls: list[bytes] = []
    real = tokens_module.hmac.compare_digest

    def counting(a: bytes, b: bytes) -> bool:
        calls.append(b)
        return real(a, b)

    monkeypatch.setattr(tokens_module.hmac, "compare_digest", counting)
    # first subscription matches; the second's raw and base64 tokens are still compared
    assert cfg.subscription_for_token("gfx-token-7f3a") is cfg.subscriptions[0]
    assert len(calls) == 3
    calls.clear()
    assert cfg.stream_client_for_token("nothing") is None
    assert len(calls) == 1


def test_stream_client_for_token_finds_the_client(tmp_path: Path) -> None:
    cfg = load_config(write(tmp_path, VALID), ENV)
    assert cfg.stream_client_for_token("stream-billing-55d1") is cfg.stream_clients[0]
    assert cfg.stream_client_for_token("gfx-token-7f3a") is None


# cpo helpers and describe


def test_cpo_patterns_parse_match_case_insensitively_and_format() -> None:
    assert parse_cpo("nl*gfx") == CpoPattern("NL", "GFX")
    assert parse_cpo("*") == CpoPattern("*", "*") == parse_cpo("***")
    assert cpo_matches((CpoPattern("NL", "GFX"),), "nl", "gfx")
    assert not cpo_matches((CpoPattern("NL", "GFX"),), "NL", "ABC")
    assert cpo_matches((parse_cpo("**GFX"),), "BE", "GFX")
    assert cpo_matches((parse_cpo("NL**"),), "NL", "ABC")
    assert not cpo_matches((CpoPattern("NL", "GFX"),), None, None)
    assert cpo_matches((CpoPattern("*", "*"),), None, None)
    assert format_cpo("nl", "gfx") == "NL*GFX"
    with pytest.raises(ValueError):
        parse_cpo("NLGFX")


def test_describe_shows_effective_config_with_every_secret_masked(tmp_path: Path) -> None:
    cfg = load_config(write(tmp_path, VALID), ENV)
    described = describe(cfg)
    dumped = json.dumps(described)
    for value in ENV.values():
        assert value not in dumped
    assert described["subscriptions"][0]["token"] == "**********"
    assert described["subscriptions"][0]["modules"] == list(MODULES)
    assert described["subscriptions"][1]["cpos"] == ["DE*ABC", "**XYZ"]
    assert described["stream_clients"][0]["cpos"] == ["*"]
    assert described["targets"][0]["secret"] == "**********" and described["targets"][0]["token"] is None
    assert described["rules"][0]["transform"][1] == {"pseudonymise": {"fields": ["id"], "key": "**********"}}
    assert described["rules"][0]["match"]["conditions"][1] == {"field": "location.evses.*.status", "in": ["AVAILABLE", "CHARGING"]}
    assert described["pull"][0]["interval"] == 3600.0


def test_routing_config_refuses_a_rule_to_an_unknown_target() -> None:
    from relay.routing.model import Match, Rule

    rule = Rule("r", Match(None, None, None, ()), ("ghost",), ())
    with pytest.raises(ValueError, match="ghost"):
        RoutingConfig(rules=(rule,))
