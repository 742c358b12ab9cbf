#!/usr/bin/env python3
"""Regenerates the real C xenstored 4.17 state files in this directory.

Usage:  python3 make-vectors.py [OUTDIR]     (default: this directory)

Needs /work/shared/peers (start-peer, stop-peer, the Debian 4.17 binaries and
the fakexen shim).  Each scenario starts Debian's C xenstored, drives it over
raw sockets with this script's own small wire client, asks it to live-update
to a wrapper script that copies RUNDIR/state_dump to OUTDIR before exec'ing
the real xenstored (MIGRATION-STREAM.md §6.3), and stops the daemon again.

Scenarios (file names end in -4.17.state):
  lu2-busy      dom1, dom3 (stub for dom1), dom5; ACLs and binary values; a
                socket with absolute, relative and @ watches that never reads
                its socket, so thousands of watch events queue up (out-data,
                maybe out-resp-len); a partial WRITE; an open transaction
                forced away with -t 2 -F; a second client's TRANSACTION_START
                sent while the LU was pending (delayed input request)
  lu3-restored  a second LU run from the daemon restored from lu2 (its state
                file is what a restored 4.17 writes: same connections, the
                partial WRITE completed, delayed start answered)
  lu4-many-delayed  three sockets holding delayed TRANSACTION_STARTs (one
                socket two of them, to show their newest-first order)
  ox1-4.17.db   oxenstored's text dump (SIGTERM): a domain, a binary value,
                an ACL, two socket watches

The exact bytes depend on timing (how much output the kernel accepted before
xenstored had to queue it), so a rerun gives equivalent, not identical, files.
"""
import os
import socket
import struct
import subprocess
import sys
import time

PEERS = "/work/shared/peers"
HERE = os.path.dirname(os.path.abspath(__file__))
OUT = os.path.abspath(sys.argv[1]) if len(sys.argv) > 1 else HERE

XS_CONTROL, XS_WATCH, XS_TS, XS_TE, XS_INTRODUCE = 0, 4, 6, 7, 8
XS_WRITE, XS_MKDIR, XS_SET_PERMS, XS_SET_TARGET, XS_READ = 11, 12, 14, 19, 2
XS_WATCH_EVENT, XS_ERROR = 15, 16


class Conn:
    """A raw xenstore wire client on the daemon's Unix socket."""

    def __init__(self, path):
        self.s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.s.connect(path)
        self.req = 100

    def send(self, mtype, payload, tx=0, req=None):
        if req is None:
            self.req += 1
            req = self.req
        self.s.sendall(struct.pack("<IIII", mtype, req, tx, len(payload)) + payload)
        return req

    def raw(self, data):
        self.s.sendall(data)

    def _read(self, n):
        buf = b""
        while len(buf) < n:
            chunk = self.s.recv(n - len(buf))
            if not chunk:
                raise EOFError("daemon closed the connection")
            buf += chunk
        return buf

    def recv(self):
        t, r, tx, ln = struct.unpack("<IIII", self._read(16))
        return t, r, tx, self._read(ln)

    def call(self, mtype, payload, tx=0):
        req = self.send(mtype, payload, tx)
        while True:
            t, r, _, p = self.recv()
            if t == XS_WATCH_EVENT:
                continue
            if r != req:
                continue
            if t == XS_ERROR:
                raise RuntimeError(f"request {mtype} {payload!r}: {p!r}")
            return p


def z(*parts):
    return b"".join(p if isinstance(p, bytes) else p.encode() for p in parts)


def start(rundir, kind="cxenstored"):
    env = dict(os.environ)
    out = subprocess.run([f"{PEERS}/start-peer", kind, rundir], check=True,
                         capture_output=True, text=True, env=env).stdout
    vals = dict(line.split("=", 1) for line in out.split())
    return vals["XENSTORED_PATH"]


def stop(rundir):
    subprocess.run([f"{PEERS}/stop-peer", rundir], check=False)


def make_wrapper(rundir, names):
    """The 'new binary': copies the state file under the next name, then
    execs the real xenstored so the daemon carries on."""
    cache = os.environ.get("XS_PEERS_CACHE", "/tmp/xs-peers-cache")
    real = f"{cache}/root/usr/lib/xen-4.17/bin/xenstored"
    counter = f"{rundir}/lu-count"
    with open(counter, "w") as f:
        f.write("0")
    lines = ["#!/bin/sh", f"n=$(cat {counter})", f"echo $((n+1)) > {counter}", "case $n in"]
    for i, name in enumerate(names):
        lines.append(f'  {i}) cp "$XENSTORED_RUNDIR/state_dump" "{OUT}/{name}" ;;')
    lines += ["esac", f'exec {real} "$@"', ""]
    path = f"{rundir}/lu-wrapper.sh"
    with open(path, "w") as f:
        f.write("\n".join(lines))
    os.chmod(path, 0o755)
    return path


def live_update(ctl, wrapper, timeout, force):
    """Sends -f then -s; returns the request id of -s (its reply comes later)."""
    ctl.call(XS_CONTROL, z("live-update\0-f\0", wrapper, "\0"))
    args = z("live-update\0-s\0-t\0", str(timeout), "\0") + (b"-F\0" if force else b"")
    return ctl.send(XS_CONTROL, args, req=0)


def wait_reply(conn, req, what):
    conn.s.settimeout(30)
    while True:
        t, r, _, p = conn.recv()
        if t in (XS_CONTROL, XS_ERROR) and r == req:
            if p != b"OK\0":
                raise RuntimeError(f"{what}: {p!r}")
            return


def populate(c):
    c.call(XS_INTRODUCE, b"1\0" b"4096\0" b"7\0")
    c.call(XS_INTRODUCE, b"3\0" b"4097\0" b"8\0")
    c.call(XS_INTRODUCE, b"5\0" b"4098\0" b"9\0")
    c.call(XS_SET_TARGET, b"3\0" b"1\0")
    for d in (1, 3, 5):
        c.call(XS_WRITE, z(f"/local/domain/{d}/name\0", f"dom{d}"))
        c.call(XS_SET_PERMS, z(f"/local/domain/{d}\0", f"n{d}\0", "r0\0"))
    c.call(XS_WRITE, z("/local/domain/1/device/vif/0/state\0", "4"))
    c.call(XS_SET_PERMS, z("/local/domain/1/device/vif/0\0", "n1\0", "r3\0", "w0\0", "b5\0"))
    c.call(XS_WRITE, b"/bin/allbytes\0" + bytes(range(256)))
    c.call(XS_WRITE, b"/bin/nul-only\0" + b"\0\0\0")
    c.call(XS_WRITE, z("/bin/big\0", "x" * 4000))
    c.call(XS_MKDIR, b"/bin/empty-dir\0")
    c.call(XS_WRITE, z("/local/domain/0/rel/a\0", "relative"))


def scenario_busy(rundir):
    path = start(rundir)
    try:
        wrapper = make_wrapper(rundir, ["lu2-busy-4.17.state", "lu3-restored-4.17.state"])
        admin = Conn(path)
        populate(admin)
        # watcher: three watches, then never reads again
        watcher = Conn(path)
        watcher.call(XS_WATCH, b"/bulk\0bulk-token\0")
        watcher.call(XS_WATCH, b"rel\0relative-token\0")
        watcher.call(XS_WATCH, b"@introduceDomain\0intro\0")
        watcher.s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1024)
        writer = Conn(path)
        for i in range(400):
            writer.call(XS_WRITE, z(f"/bulk/n{i}\0", f"v{i}"))
        # partial request: a WRITE header plus 3 of its 13 payload bytes
        partial = Conn(path)
        partial.raw(struct.pack("<IIII", XS_WRITE, 77, 0, 13) + b"/pa")
        # a transaction left open (forced away by -F)
        tx = Conn(path)
        txid = int(tx.call(XS_TS, b"\0").rstrip(b"\0"))
        tx.call(XS_WRITE, z("/in-tx\0", "lost"), tx=txid)
        ctl = Conn(path)
        req = live_update(ctl, wrapper, 2, True)
        time.sleep(0.5)
        late = Conn(path)
        late.send(XS_TS, b"\0")            # delayed while LU is pending
        wait_reply(ctl, req, "LU 1")
        time.sleep(0.3)
        # second LU from the restored daemon: finish the partial write first
        partial.raw(b"rtial\0done")  # completes the 13 bytes
        time.sleep(0.3)
        req = live_update(ctl, wrapper, 2, True)
        wait_reply(ctl, req, "LU 2")
    finally:
        stop(rundir)


def scenario_many_delayed(rundir):
    path = start(rundir)
    try:
        wrapper = make_wrapper(rundir, ["lu4-many-delayed-4.17.state"])
        admin = Conn(path)
        admin.call(XS_INTRODUCE, b"2\0" b"4096\0" b"7\0")
        admin.call(XS_WRITE, b"/local/domain/2/name\0guest2")
        holder = Conn(path)
        txid = int(holder.call(XS_TS, b"\0").rstrip(b"\0"))
        holder.call(XS_READ, b"/local/domain/2/name\0", tx=txid)
        ctl = Conn(path)
        req = live_update(ctl, wrapper, 3, True)
        time.sleep(0.3)
        late = [Conn(path) for _ in range(3)]
        for i, c in enumerate(late):
            c.send(XS_TS, b"\0")
            if i == 1:
                c.send(XS_TS, b"\0")     # a second delayed start on the same socket
            time.sleep(0.1)
        wait_reply(ctl, req, "LU many")
    finally:
        stop(rundir)


def scenario_oxenstored(rundir):
    """oxenstored writes its text dump RUNDIR/db on SIGTERM (stop-peer)."""
    path = start(rundir, "oxenstored")
    try:
        admin = Conn(path)
        admin.call(XS_INTRODUCE, b"4\0" b"4096\0" b"7\0")
        admin.call(XS_WRITE, b"/foo\0bar")
        admin.call(XS_WRITE, b"/local/domain/4/name\0guest4")
        admin.call(XS_SET_PERMS, b"/local/domain/4\0n4\0r0\0b5\0")
        admin.call(XS_WRITE, b"/bin/allbytes\0" + bytes(range(256)))
        watcher = Conn(path)
        watcher.call(XS_WATCH, b"/foo\0foo-token\0")
        watcher.call(XS_WATCH, b"@releaseDomain\0rel\0")
    finally:
        stop(rundir)
    with open(f"{rundir}/db", "rb") as src, open(f"{OUT}/ox1-4.17.db", "wb") as dst:
        dst.write(src.read())


def main():
    os.makedirs(OUT, exist_ok=True)
    scenarios = [("busy", scenario_busy), ("many", scenario_many_delayed), ("ox", scenario_oxenstored)]
    only = os.environ.get("ONLY")
    for name, fn in scenarios:
        if only and name != only:
            continue
        rundir = f"/tmp/snapvec-{name}"
        os.makedirs(rundir, exist_ok=True)
        fn(rundir)
    for f in sorted(os.listdir(OUT)):
        if f.endswith(".state") or f.endswith(".db"):
            print(f, os.path.getsize(os.path.join(OUT, f)))


if __name__ == "__main__":
    main()
