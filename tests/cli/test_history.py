"""``stratus events|logs|history`` against the cluster: the feed of one job as lines and as
JSON lines (ending once the job ends), a job's log whole and followed to its end, its
transitions and attempts; an unknown job is exit 3, a bad option 2."""

from __future__ import annotations

import json

from tests.cli.conftest import MC, Stratus, one_line


def test_events_of_a_job_end_with_it(stratus: Stratus) -> None:
    job = stratus.json("submit", "montecarlo_pi", *MC)["id"]
    lines = stratus.ok("events", "--job", job, "--json", "--after", "0").stdout.splitlines()
    feed = [json.loads(line) for line in lines]
    assert {e["data"]["job_id"] for e in feed} == {job}
    ids = [int(e["id"]) for e in feed]
    assert ids == sorted(set(ids))
    assert feed[-1]["event"] == "job.state"
    assert feed[-1]["data"]["state"] == "SUCCEEDED"
    plain = stratus.ok("events", "--job", job, "--after", "0").stdout.splitlines()
    assert len(plain) == len(feed)
    assert plain[-1].startswith(f"{feed[-1]['id']} ")
    assert plain[-1].endswith(f" job {job} SUCCEEDED")
    assert all(len(line) <= 80 for line in plain)
    rest = stratus.ok("events", "--job", job, "--after", feed[0]["id"]).stdout.splitlines()
    assert rest == plain[1:]  # resumed after the first: the others, once each
    first = stratus.ok("events", "--after", "0", "--limit", "1").stdout.splitlines()
    assert first == plain[:1]


def test_logs_and_history(stratus: Stratus) -> None:
    job = stratus.json("submit", "montecarlo_pi", *MC)["id"]
    followed = stratus.ok("logs", job, "-f").stdout  # ends once the job has ended
    assert stratus.json("show", job)["state"] == "SUCCEEDED"
    assert "SUCCEEDED" in followed
    whole = stratus.ok("logs", job).stdout
    assert sorted(whole.splitlines()) == sorted(followed.splitlines())  # the order may differ
    shown = stratus.ok("history", job).stdout
    assert "SUCCEEDED" in shown
    assert "attempt 1" in shown
    assert all(len(line) <= 80 for line in shown.splitlines())
    both = stratus.json("history", job)
    assert both["events"][-1]["state"] == "SUCCEEDED"
    assert [a["attempt"] for a in both["attempts"]] == [1]


def test_an_unknown_job_is_exit_3(stratus: Stratus) -> None:
    unknown = "00000000-0000-0000-0000-000000000000"
    for args in (
        ("logs", unknown),
        ("logs", unknown, "-f"),
        ("history", unknown),
        ("events", "--job", unknown),
    ):
        result = stratus(*args)
        assert result.exit_code == 3, args
        assert one_line(result.stderr).startswith("stratus: 404 ")
    assert stratus("events", "--limit", "0").exit_code == 2  # a usage error
