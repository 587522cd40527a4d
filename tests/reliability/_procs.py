"""Process helpers for the fault tests: find and kill exactly the processes a test started (never
`ray stop --force`, which stops every Ray on the machine, CI runs of other checkouts included)."""
from __future__ import annotations

import os
import signal
import time


def _read(pid: int, what: str) -> bytes:
    try:
        with open(f"/proc/{pid}/{what}", "rb") as f:
            return f.read()
    except OSError:
        return b""


def pids() -> list[int]:
    return [int(p) for p in os.listdir("/proc") if p.isdigit()]


def cmdline(pid: int) -> str:
    return _read(pid, "cmdline").replace(b"\0", b" ").decode(errors="replace").strip()


def stat_fields(pid: int) -> list[str]:
    s = _read(pid, "stat").decode(errors="replace")
    return s[s.rfind(")") + 2:].split() if s else []  # fields after "pid (comm)"


def ppid(pid: int) -> int:
    f = stat_fields(pid)
    return int(f[1]) if f else -1


def sid(pid: int) -> int:
    f = stat_fields(pid)
    return int(f[3]) if f else -1


def alive(pid: int) -> bool:
    f = stat_fields(pid)
    return bool(f) and f[0] != "Z"


def descendants(roots: set[int]) -> set[int]:
    """roots and every process below them."""
    parent = {p: ppid(p) for p in pids()}
    out, grew = set(roots), True
    while grew:
        new = {p for p, pp in parent.items() if pp in out and p not in out}
        out |= new
        grew = bool(new)
    return out


def in_session(session: int) -> list[int]:
    return [p for p in pids() if sid(p) == session]


def kill_all(targets: set[int], grace: float = 3.0) -> None:
    """SIGTERM, then SIGKILL what is left after `grace` seconds."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        for p in targets:
            try:
                os.kill(p, sig)
            except OSError:
                pass
        end = time.time() + grace
        while time.time() < end and any(alive(p) for p in targets):
            time.sleep(0.1)


def trial_actors(session: int) -> dict[int, str]:
    """{pid: trial id} of the Tune trial actors started under a driver's session. A trainable's
    working directory is .../working_dirs/run_trial_<id>_..., which names the trial."""
    out = {}
    for p in in_session(session):
        if cmdline(p).startswith("ray::ImplicitFunc"):
            try:
                cwd = os.path.basename(os.readlink(f"/proc/{p}/cwd"))
            except OSError:
                continue
            if cwd.startswith("run_trial_"):
                out[p] = cwd.split("_")[2]
    return out


def cluster_processes(gcs_port: int) -> set[int]:
    """Every process of the Ray cluster whose GCS listens on gcs_port (same machine), and their
    children (agents, workers)."""
    session = None
    for p in pids():
        c = cmdline(p)
        if "gcs_server" in c and f"--gcs_server_port={gcs_port}" in c:
            session = next((a.split("=", 1)[1] for a in c.split() if a.startswith("--session-name=")), None)
    roots = {p for p in pids() if (session and session in cmdline(p)) or f":{gcs_port} " in cmdline(p) + " "}
    roots.discard(os.getpid())
    return descendants(roots) - {os.getpid()}


def raylet_of(node_id: str) -> int | None:
    for p in pids():
        c = cmdline(p)
        if "/raylet/raylet " in c and f"--node_id={node_id}" in c:
            return p
    return None


def listening_ports(owner_pids: set[int]) -> dict[int, list[tuple[str, int]]]:
    """{pid: [(local address, port), ...]} of TCP sockets in LISTEN state owned by owner_pids."""
    inodes: dict[str, int] = {}
    for p in owner_pids:
        try:
            for fd in os.listdir(f"/proc/{p}/fd"):
                try:
                    link = os.readlink(f"/proc/{p}/fd/{fd}")
                except OSError:
                    continue
                if link.startswith("socket:["):
                    inodes[link[8:-1]] = p
        except OSError:
            continue
    out: dict[int, list] = {}
    for table, v6 in (("/proc/net/tcp", False), ("/proc/net/tcp6", True)):
        try:
            lines = open(table).read().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            f = line.split()
            if f[3] != "0A" or f[9] not in inodes:  # 0A = LISTEN
                continue
            addr_hex, port_hex = f[1].split(":")
            out.setdefault(inodes[f[9]], []).append((_addr(addr_hex, v6), int(port_hex, 16)))
    return out


def _addr(h: str, v6: bool) -> str:
    import ipaddress

    raw = bytes.fromhex(h)
    if not v6:
        return str(ipaddress.IPv4Address(raw[::-1]))
    words = b"".join(raw[i:i + 4][::-1] for i in range(0, 16, 4))
    return str(ipaddress.IPv6Address(words))
