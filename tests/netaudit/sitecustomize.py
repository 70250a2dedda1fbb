"""Network audit for the offline test (tests/integration/offline/test_air_gapped.py): on PYTHONPATH,
every Python process of the stack (deploy.py, Ray's workers, vLLM's engine)
appends each outgoing connection attempt and each name lookup that is not
loopback to the file named by NET_AUDIT_LOG. Python-level only: native code
(Ray's C++ core, glibc's resolver) is covered by the test's network namespace,
which has nothing but loopback."""

import os
import socket
import sys

LOG = os.environ.get("NET_AUDIT_LOG")
LOCAL_NAMES = {None, "", "localhost", "0.0.0.0", "::", "::1", socket.gethostname()}


def _local(host: object) -> bool:
    if isinstance(host, bytes):
        host = host.decode(errors="replace")
    return host in LOCAL_NAMES or (isinstance(host, str) and host.startswith(("127.", "::ffff:127.")))


def _hook(event: str, args: tuple) -> None:
    if event == "socket.connect":
        sock, address = args
        if getattr(sock, "family", None) == socket.AF_UNIX or not isinstance(address, tuple) or _local(address[0]):
            return
        # A UDP connect sends nothing: it asks the kernel for a route (vLLM's
        # get_ip and Ray find the local address this way). Logged apart.
        kind = "udp-route-lookup" if getattr(sock, "type", None) == socket.SOCK_DGRAM else "connect"
        what = f"{kind} {address!r}"
    elif event == "socket.getaddrinfo":
        if _local(args[0]):
            return
        what = f"getaddrinfo {args[0]!r}"
    else:
        return
    with open(LOG, "a", encoding="utf-8") as out:
        out.write(f"pid {os.getpid()} {' '.join(sys.argv[:2])[:120]}: {what}\n")


if LOG:
    sys.addaudithook(_hook)
    # Which processes the audit covers (the test's check that it ran at all).
    with open(f"{LOG}.loaded", "a", encoding="utf-8") as out:
        out.write(f"pid {os.getpid()} {' '.join(sys.argv[:3])[:200]}\n")
