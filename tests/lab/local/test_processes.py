"""Local mode's ports: each one has one owner, because servers of a variant share theirs on purpose."""

from __future__ import annotations

import concurrent.futures

from rollout_lab.local import processes


def test_free_port_never_hands_out_a_port_twice() -> None:
    # Two rollouts allocate their ports from two threads; the kernel alone may offer a port again
    # once it is closed, which would put two variants behind one `--reuse-port` port.
    with concurrent.futures.ThreadPoolExecutor(4) as pool:
        ports = list(pool.map(lambda _: processes.free_port(), range(600)))
    assert len(set(ports)) == len(ports)
    assert all(1024 <= p <= 65535 for p in ports)
