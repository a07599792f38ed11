"""The built-in case sets: `vcpureq check` (default), `--set big` and `--set all`."""

from __future__ import annotations

import pytest
from click.testing import CliRunner

from vcpureq.catalogue import builtin_cases
from vcpureq.cli import main


def keys(which: str) -> set[tuple[str, str, str]]:
    return {(c.protocol, c.scenario, c.memory_model) for c in builtin_cases(which=which)}


def test_default_and_big_are_disjoint_and_make_all() -> None:
    default, big, every = keys("default"), keys("big"), keys("all")
    assert default and big
    assert not default & big
    assert default | big == every
    # each architecture family has something in the big set
    families = {p.split("-")[0] for p, _, _ in big}
    assert {"generic", "x86", "arm64", "ppc64", "s390x", "kvm"} <= families


def test_unknown_set_is_an_error() -> None:
    with pytest.raises(ValueError, match="unknown case set"):
        builtin_cases(which="huge")
    r = CliRunner().invoke(main, ["check", "--set", "huge"])
    assert r.exit_code == 2 and "huge" in r.output


def test_replay_finds_a_big_case() -> None:
    # A big case is not in the default catalogue, but replay knows it by name.
    big = builtin_cases(which="big")[0]
    r = CliRunner().invoke(main, ["replay", big.name, f"{big.memory_model}:0"])
    assert "unknown target" not in r.output


def test_replay_a_scenario_of_a_users_protocol() -> None:
    """FILE.py:NAME/SCENARIO replays a counterexample of `check --protocol FILE.py:NAME`
    without writing a program object."""
    target = "examples/user_variant.py:X86NoMbBeforeRequestCheck"
    r = CliRunner().invoke(main, ["check", "--protocol", target, "--scenario",
                                  "async-request", "--json"])
    assert r.exit_code == 1
    import json

    token = json.loads(r.output)[0]["violation"]["schedule"]
    r = CliRunner().invoke(main, ["replay", f"{target}/async-request", token])
    assert "no lost request" in r.output, r.output
    r = CliRunner().invoke(main, ["replay", f"{target}/nope", token])
    assert r.exit_code == 2 and "has no scenario 'nope'" in r.output


def test_jobs_give_the_same_verdicts_as_one_at_a_time() -> None:
    """`check -j 2` forks workers; verdicts, executions and order are those of `-j 1`."""
    import json

    args = ["check", "--protocol", "generic-check-before-mode", "--protocol",
            "generic-no-mb-after-mode", "--json"]
    one = json.loads(CliRunner().invoke(main, [*args, "-j", "1"]).output)
    two = json.loads(CliRunner().invoke(main, [*args, "-j", "2"]).output)

    def key(d: dict) -> list:  # type: ignore[type-arg]
        return [(x["protocol"], x["scenario"], x["memory_model"], x["verdict"],
                 x["executions"], x["as_expected"]) for x in d]

    assert key(one) == key(two) and len(one) > 10
    assert all(x["as_expected"] for x in two)
    # a counterexample comes back whole from a worker
    broken = [x for x in two if x["violation"]]
    assert broken and all(x["violation"]["trace"] for x in broken)
