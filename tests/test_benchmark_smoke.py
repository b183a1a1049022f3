"""The benchmark (benchmarks/enrollments.py) works end to end on a tiny run: every workflow it starts
closes the way it should, every sample is taken. No timing is asserted here; the numbers are the
benchmark's to report."""

from __future__ import annotations


import pytest

from benchmarks.enrollments import Options, measure_engine, measure_raw, parse, ratios, table

TINY = Options(n=3, signal_samples=3, event_samples=2, concurrency=3, postgres=False)




@pytest.fixture(scope="module")
async def raw(dev_env) -> dict:
    return await measure_raw(dev_env.client, TINY)


async def test_the_raw_baseline_completes_every_workflow_and_takes_every_sample(raw):
    assert raw["batch"]["started"] == 3 and raw["batch"]["completed"] == 3
    assert raw["batch"]["per_workflow"]["samples"] == 3
    assert raw["signal_round_trip"]["samples"] == 3
    assert raw["event_to_exit"]["samples"] == 2 and raw["event_to_exit"]["exited"] == 2


async def test_the_engine_completes_every_enrollment_and_exits_on_every_goal(dev_env, raw, db, tmp_path):
    engine = await measure_engine(dev_env.client, db, tmp_path, TINY)

    for via in ("enroller", "api"):
        batch = engine[via]["batch"]
        assert batch["started"] == 3 and batch["completed"] == 3, via
        assert batch["emails_sent"] == 6, via  # two per enrollment, once each
        assert engine[via]["event_to_exit"]["samples"] == 2 and engine[via]["event_to_exit"]["exited"] == 2, via
    assert engine["signal_round_trip"]["samples"] == 3

    report = {"options": {"n": 3}, "raw": raw, "engine": {"sqlite": engine}, "ratios": {"sqlite": ratios(raw, engine)}}
    printed = table(report)
    assert "starts/s" in printed and "HTTP API" in printed and "signal round trip p95" in printed


def test_the_command_line_sets_the_sizes():
    options, output = parse(["-n", "7", "--signal-samples", "4", "--no-postgres", "--output", "/tmp/x.json"])
    assert (options.n, options.signal_samples, options.postgres, str(output)) == (7, 4, False, "/tmp/x.json")
