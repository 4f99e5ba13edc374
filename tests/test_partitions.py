"""``pyncette.partitions``: the setting, the stable hash of a job id, and the stores' defaults."""

from __future__ import annotations

import subprocess
import sys

import pytest
from pyramid.exceptions import ConfigurationError

from pyramid_pyncette.jobs import MAX_PARTITIONS, partition_of
from pyramid_pyncette.repository import store_partitions
from pyramid_pyncette.settings import parse_settings


def test_partition_of_is_a_stable_crc32_of_the_id():
    # Fixed values: the partition must never change between versions or processes,
    # or a store could no longer find the jobs it holds.
    import zlib

    for job_id in ["a", "job-1", "0" * 32, "ünïcode", "with space"]:
        expected = zlib.crc32(job_id.encode()) % 16
        assert partition_of(job_id, 16) == expected
    assert partition_of("anything", 1) == 0


def test_partition_of_is_the_same_in_another_process():
    ids = [f"job-{n}" for n in range(50)]
    code = (
        "from pyramid_pyncette.jobs import partition_of;"
        f"print([partition_of(i, 16) for i in {ids!r}])"
    )
    out = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        check=True,
        env={"PYTHONHASHSEED": "12345", "PATH": ""},
    ).stdout
    assert out.strip() == str([partition_of(i, 16) for i in ids])


def test_partition_of_spreads_ids_over_every_partition():
    counts = [0] * 16
    for n in range(16_000):
        counts[partition_of(f"{n:032x}", 16)] += 1
    assert min(counts) > 800 and max(counts) < 1200


@pytest.mark.parametrize(
    "url, expected",
    [
        ("memory://", 1),
        ("sqlite:///x.sqlite", 1),
        ("postgresql+psycopg://u@h/db", 1),
        ("mysql+pymysql://u@h/db", 1),
        ("redis://127.0.0.1:6379/0", 16),
        ("dynamodb://eu-west-1/jobs", 16),
    ],
)
def test_default_partitions_per_store(url, expected):
    assert store_partitions(parse_settings({"pyncette.url": url})) == expected


def test_partitions_setting_is_read_and_bounded():
    settings = parse_settings({"pyncette.url": "redis://h:6379/0", "pyncette.partitions": "4"})
    assert settings.partitions == 4
    assert store_partitions(settings) == 4
    for bad in ["0", "-1", "x", str(MAX_PARTITIONS + 1)]:
        with pytest.raises(ConfigurationError, match=r"pyncette\.partitions"):
            parse_settings({"pyncette.partitions": bad})


def test_memory_store_takes_any_partition_count():
    settings = parse_settings({"pyncette.url": "memory://", "pyncette.partitions": "8"})
    assert store_partitions(settings) == 8


@pytest.mark.parametrize("url", ["sqlite:///{tmp}/j.sqlite", "postgresql+psycopg://u@h/db"])
def test_sql_store_refuses_more_than_one_partition_at_include(url, tmp_path, make_config):
    settings = {"pyncette.url": url.format(tmp=tmp_path), "pyncette.partitions": "4"}
    with pytest.raises(ConfigurationError, match=r"pyncette.partitions = 4.*SQL stores"):
        config = make_config(settings)
        config.commit()


def test_jobs_carry_their_partition(make_config):
    config = make_config({"pyncette.url": "memory://", "pyncette.partitions": "8"})
    config.add_pyncette_task(lambda request: None, name="tick")
    config.commit()
    scheduler = config.registry.scheduler
    for n in range(20):
        scheduler.add_interval_job("tick", 60, job_id=f"j{n}")
    partitions = {scheduler.repository.get(f"j{n}").partition for n in range(20)}
    assert partitions == {partition_of(f"j{n}", 8) for n in range(20)}
    assert len(partitions) > 1
