"""`mailfleet mta` started by hand runs one engine process per CPU it is given: the CPU count
from cgroup files (v2 cpu.max, v1 cfs quota/period) and the affinity, and how --processes, a
pod and submission.reusePort change it."""

from __future__ import annotations

from pathlib import Path

import pytest

from mailfleet.cli import build_parser, default_processes
from mailfleet.mta.config import EngineConfig
from mailfleet.mta.supervisor import (
    cgroup_cpu_limit,
    choose_processes,
    cpus_for_processes,
)

V2_ROOT = "0::/\n"


def _write(root: Path, rel: str, text: str) -> None:
    path = root / rel
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


@pytest.mark.parametrize(
    ("cpu_max", "expected"),
    [
        ("max 100000\n", None),  # no quota
        ("200000 100000\n", 2.0),
        ("150000 100000\n", 1.5),
        ("50000 100000\n", 0.5),
        ("400000 200000\n", 2.0),  # another period
        ("garbage\n", None),  # unreadable: the affinity decides
        ("", None),
    ],
)
def test_cgroup_v2_cpu_max(tmp_path: Path, cpu_max: str, expected: float | None) -> None:
    _write(tmp_path, "cpu.max", cpu_max)
    assert cgroup_cpu_limit(tmp_path, V2_ROOT) == expected


def test_cgroup_v2_the_smallest_quota_on_the_path_up(tmp_path: Path) -> None:
    # A systemd slice with CPUQuota=300% holding a service capped at 150%.
    _write(tmp_path, "cpu.max", "max 100000\n")
    _write(tmp_path, "system.slice/cpu.max", "300000 100000\n")
    _write(tmp_path, "system.slice/mta.service/cpu.max", "150000 100000\n")
    assert cgroup_cpu_limit(tmp_path, "0::/system.slice/mta.service\n") == 1.5
    _write(tmp_path, "system.slice/mta.service/cpu.max", "max 100000\n")
    assert cgroup_cpu_limit(tmp_path, "0::/system.slice/mta.service\n") == 3.0


def test_cgroup_v2_a_path_not_mounted_here_reads_the_mount(tmp_path: Path) -> None:
    _write(tmp_path, "cpu.max", "100000 100000\n")
    assert cgroup_cpu_limit(tmp_path, "0::/kubepods/pod1/abc\n") == 1.0


@pytest.mark.parametrize(
    ("quota", "period", "expected"),
    [("-1\n", "100000\n", None), ("300000\n", "100000\n", 3.0), ("50000\n", "100000\n", 0.5)],
)
@pytest.mark.parametrize("mount", ["cpu", "cpu,cpuacct"])
def test_cgroup_v1_cfs_quota(
    tmp_path: Path, mount: str, quota: str, period: str, expected: float | None
) -> None:
    _write(tmp_path, f"{mount}/cpu.cfs_quota_us", quota)
    _write(tmp_path, f"{mount}/cpu.cfs_period_us", period)
    proc = f"4:memory:/x\n3:{'cpu,cpuacct' if mount != 'cpu' else 'cpu'}:/\n0::/\n"
    assert cgroup_cpu_limit(tmp_path, proc) == expected


def test_cgroup_v1_container_sees_the_hosts_path(tmp_path: Path) -> None:
    # Without a cgroup namespace /proc/self/cgroup names the host's path; the mount holds the
    # container's own cgroup.
    _write(tmp_path, "cpu,cpuacct/cpu.cfs_quota_us", "200000\n")
    _write(tmp_path, "cpu,cpuacct/cpu.cfs_period_us", "100000\n")
    proc = "2:cpu,cpuacct:/kubepods/burstable/pod1/abc\n"
    assert cgroup_cpu_limit(tmp_path, proc) == 2.0


def test_hybrid_host_the_smaller_of_v1_and_v2(tmp_path: Path) -> None:
    _write(tmp_path, "cpu/cpu.cfs_quota_us", "300000\n")
    _write(tmp_path, "cpu/cpu.cfs_period_us", "100000\n")
    _write(tmp_path, "unified/cpu.max", "100000 100000\n")
    assert cgroup_cpu_limit(tmp_path, "1:cpu:/\n0::/\n") == 1.0


def test_no_cgroup_files_no_limit(tmp_path: Path) -> None:
    assert cgroup_cpu_limit(tmp_path, "") is None
    assert cgroup_cpu_limit(tmp_path, V2_ROOT) is None


@pytest.mark.parametrize(
    ("limit", "affinity", "expected"),
    [
        (None, 8, 8),  # no quota: every CPU it may run on
        (None, 1, 1),
        (None, 0, 1),  # nothing known: one
        (2.0, 8, 2),
        (1.999999999999, 8, 2),  # float noise is not a CPU fewer
        (1.5, 8, 1),  # a fraction of a CPU is not another process
        (0.25, 8, 1),
        (16.0, 4, 4),  # the affinity caps a generous quota
    ],
)
def test_processes_for_the_cpus(limit: float | None, affinity: int, expected: int) -> None:
    assert cpus_for_processes(limit, affinity) == expected


def test_by_hand_auto_in_a_pod_one() -> None:
    assert default_processes(None, None) == "auto"
    assert default_processes(None, "pool-0") == 1
    assert default_processes(3, "pool-0") == 3
    assert default_processes("auto", "pool-0") == "auto"
    assert default_processes(1, None) == 1


def test_processes_argument() -> None:
    parser = build_parser()
    assert parser.parse_args(["mta", "-c", "x"]).processes is None
    assert parser.parse_args(["mta", "-c", "x", "--processes", "auto"]).processes == "auto"
    assert parser.parse_args(["mta", "-c", "x", "--processes", "4"]).processes == 4


@pytest.mark.parametrize("bad", ["0", "-2", "two", "1.5"])
def test_processes_argument_refused(bad: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as e:
        build_parser().parse_args(["mta", "-c", "x", "--processes", bad])
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert "--processes" in err and "'auto'" in err and repr(bad) in err


def _cfg(**submission: object) -> EngineConfig:
    return EngineConfig.model_validate({"submission": submission})


def test_auto_uses_the_cpus() -> None:
    assert choose_processes("auto", 4, _cfg()) == (4, None)
    assert choose_processes("auto", 1, _cfg()) == (1, None)
    assert choose_processes("auto", 4, _cfg(reusePort=True)) == (4, None)


def test_auto_with_reuse_port_false_is_one_process() -> None:
    n, why = choose_processes("auto", 4, _cfg(reusePort=False))
    assert n == 1
    assert why is not None and "reusePort" in why


def test_explicit_processes_share_the_port_whatever_reuse_port_says() -> None:
    assert choose_processes(3, 1, _cfg(reusePort=False)) == (3, None)


def test_never_more_processes_than_the_smallest_connection_limit() -> None:
    cfg = EngineConfig.model_validate({"shaping": {"default": {"perIP": {"maxConnections": 2}}}})
    n, why = choose_processes("auto", 8, cfg)
    assert n == 2 and why is not None and "connection limit" in why
