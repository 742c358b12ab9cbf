# The scenarios of the Xen test harness, sourced by dom0's /init (busybox
# sh). Each prints `XH PASS|FAIL|SKIP NAME SECONDS [why]` on dom0's console,
# which tests/xen/run reads from the serial log. They run in order and
# build on each other: the daemon started by the first serves the rest.
#
# /harness/flavour says which daemon is dom0's xenstored: rxenstored (ours)
# or cxenstored (Debian's C xenstored 4.17, to prove the harness).

FLAVOUR=$(cat /harness/flavour)
ONLY=$(cat /harness/only 2>/dev/null)
C_XENSTORED=/usr/lib/xen-4.17/bin/xenstored
R_XENSTORED=/usr/sbin/rxenstored
STATE_DIR=/var/lib/xenstored
PIDFILE=/var/run/xen/xenstored.pid
XS_LOG=/var/log/xen/xenstored.log
# The stub domain image (tests/xen/run puts it where the package does).
STUBDOM_IMAGE=/usr/lib/rxenstored/rxenstored-stubdom
case "$FLAVOUR" in
    rxenstored) XS_BIN=$R_XENSTORED; XS_ARGS="--state-dir $STATE_DIR --durability commit --log-file $XS_LOG" ;;
    # No daemon in dom0: the store is a domain, its log is its console.
    stubdom) XS_BIN=; XS_ARGS=; XS_LOG=/var/log/xen/console/guest-Xenstore.log ;;
    *) XS_BIN=$C_XENSTORED; XS_ARGS= ;;
esac
# Ours: rxenstored in dom0 or its stub domain (CONTROL quota and the like).
case "$FLAVOUR" in rxenstored|stubdom) OURS=1 ;; *) OURS= ;; esac
[ -e /harness/xs_args ] && XS_ARGS=$(cat /harness/xs_args)
XL_TIMEOUT=240
FAILED=0

now() { cut -d' ' -f1 /proc/uptime; }
elapsed() { awk -v a="$1" -v b="$(now)" 'BEGIN { printf "%.1f", b - a }'; }
info() { echo "XH INFO $*"; }
say() { echo "xh: $*"; }
xsread() { timeout 20 xenstore-read "$@" 2>/dev/null; }

# scenario NAME FUNCTION [flavours]: runs FUNCTION unless --only left it
# out or it does not apply to this daemon.
scenario() {
    name=$1 fn=$2 flavours=${3:-rxenstored cxenstored stubdom}
    if [ -n "$ONLY" ] && ! echo ",$ONLY," | grep -q ",$name,"; then return 0; fi
    case " $flavours " in
        *" $FLAVOUR "*) ;;
        *) echo "XH SKIP $name 0 does not apply to $FLAVOUR"; return 0 ;;
    esac
    say "--- $name"
    WHY=
    t0=$(now)
    if $fn; then
        echo "XH PASS $name $(elapsed "$t0")"
    else
        echo "XH FAIL $name $(elapsed "$t0") ${WHY:-failed}"
        FAILED=1
        if [ -s $XS_LOG ]; then
            say "the daemon's log ($XS_LOG):"
            tail -n 40 $XS_LOG | sed 's/^/xh:   /'
        fi
    fi
}

# check WHAT COMMAND...: runs COMMAND; on failure WHAT becomes the reason.
check() {
    local what=$1
    shift
    "$@" && return 0
    WHY=$what
    say "check failed: $what"
    return 1
}

daemon_pid() { cat $PIDFILE 2>/dev/null; }
daemon_exe() { readlink "/proc/$(daemon_pid)/exe"; }

# ---- guests ------------------------------------------------------------------

# guest_cfg NAME ROLE [cfg lines...]
guest_cfg() {
    local name=$1 role=$2
    shift 2
    cat >/run/$name.cfg <<EOF
name = "$name"
type = "pv"
kernel = "/harness/vmlinuz"
ramdisk = "/harness/guest.cpio"
extra = "console=hvc0 mitigations=off init_on_alloc=0 rdinit=/init probe=$role"
memory = 128
vcpus = 1
on_poweroff = "destroy"
on_crash = "destroy"
EOF
    for line in "$@"; do echo "$line" >>/run/$name.cfg; done
}

# create NAME [xl create options]
create() {
    local name=$1
    shift
    if timeout $XL_TIMEOUT xl create "$@" /run/$name.cfg >/run/$name.create.log 2>&1; then
        return 0
    fi
    say "xl create $name failed:"
    sed 's/^/xh:   /' /run/$name.create.log
    return 1
}

domid_of() { xl domid "$1" 2>/dev/null; }

guest_console() {
    say "console of $1:"
    tail -n 30 /var/log/xen/console/guest-$1.log 2>/dev/null | sed 's/^/xh:   /'
}

# workload_running DOMID: the guest's workload has reported progress.
workload_running() {
    xen-probe wait /local/domain/$1/data/probe/status --timeout 120
}

# gone PATH: waits up to 30 s for PATH to be removed.
gone() {
    for _ in $(seq 1 60); do
        timeout 20 xenstore-exists "$1" 2>/dev/null || return 0
        sleep 0.5
    done
    return 1
}

iterations() { xsread /local/domain/$1/$2/status | sed -n 's/.*iterations=\([0-9]*\).*/\1/p'; }

# advancing DOMID [DIR]: the workload's iteration count grows within 30 s.
advancing() {
    local dir=${2:-data/probe} before after
    before=$(iterations "$1" "$dir")
    for _ in $(seq 1 60); do
        sleep 0.5
        after=$(iterations "$1" "$dir")
        if [ -n "$after" ] && [ "$after" != "$before" ]; then return 0; fi
    done
    say "workload of $1 ($dir) stuck at ${before:-nothing}"
    return 1
}

# finish_workload DOMID [DIR [LOST]]: asks it to stop; its verdict must be
# ok, with at most LOST (default 0) transactions lost: a transaction open
# across a crash restart is adopted as one that cannot commit, so its reads
# need not give back its earlier writes (they went with the old process).
finish_workload() {
    local dir=${2:-data/probe} allowed=${3:-0} result lost
    timeout 20 xenstore-write /local/domain/$1/$dir/stop 1 || return 1
    xen-probe wait /local/domain/$1/$dir/result --timeout 60 || return 1
    result=$(xsread /local/domain/$1/$dir/result)
    info "workload $1/$dir: $result"
    case "$result" in ok*) ;; *) WHY="workload $1: $result"; return 1 ;; esac
    lost=$(echo "$result" | sed -n 's/.*lost_tx=\([0-9]*\).*/\1/p')
    [ "${lost:-0}" -le "$allowed" ] || { WHY="workload $1: $lost transactions lost, at most $allowed expected"; return 1; }
}

# ---- 1. started as a host starts it ----------------------------------------

s_start_as_host() {
    # Scenario 2's request goes in first: through dom0's kernel ring,
    # before any daemon runs.
    xen-probe --xenbus --reply-timeout 90 write /harness/early queued-before-start >/run/early.out 2>&1 &
    EARLY_PID=$!
    # And Xen's own tool: without -s, 4.17's libxenstore talks through
    # /dev/xen/xenbus (dom0's kernel ring) first, not the socket.
    timeout 90 xenstore-write /harness/early-tool yes >/run/early-tool.out 2>&1 &
    EARLY_TOOL_PID=$!
    sleep 2
    cat >/etc/default/xencommons <<EOF
XENSTORETYPE=daemon
XENSTORED=$XS_BIN
XENSTORED_ARGS="$XS_ARGS"
EOF
    t=$(now)
    check "launch-xenstore" timeout 60 /etc/xen/scripts/launch-xenstore || return 1
    info "launch-xenstore returned after $(elapsed "$t") s"
    check "pid file $PIDFILE" test -s $PIDFILE || return 1
    check "daemon $(daemon_pid) alive" kill -0 "$(daemon_pid)" || return 1
    check "the pid file names $XS_BIN, not $(daemon_exe)" [ "$(daemon_exe)" = "$XS_BIN" ] || return 1
    t=$(now)
    check "first socket request answered within 10 s" timeout 10 xenstore-read -s / >/dev/null || return 1
    info "first socket request took $(elapsed "$t") s"
    t=$(now)
    check "first xenstore-read without -s (dom0's kernel ring) answered within 10 s" \
        timeout 10 xenstore-read / >/dev/null || return 1
    info "first request through dom0's kernel ring took $(elapsed "$t") s"
    check "xen-init-dom0" timeout 60 xen-init-dom0 >/run/xen-init-dom0.log 2>&1 || return 1
    check "xenconsoled" xenconsoled --log=guest --log-dir=/var/log/xen/console || return 1
    check "dom0's name" [ "$(xsread /local/domain/0/name)" = Domain-0 ] || return 1
}

# ---- 1'. the stub domain as Xen's xenstore domain ---------------------------

s_start_stub_domain() {
    cat >/etc/default/xencommons <<EOF
XENSTORETYPE=domain
XENSTORE_DOMAIN_KERNEL=$STUBDOM_IMAGE
EOF
    t=$(now)
    # launch-xenstore runs init-xenstore-domain (default --memory 8), which
    # returns once the store has answered its writes through dom0's ring.
    check "launch-xenstore" timeout 60 /etc/xen/scripts/launch-xenstore || return 1
    info "launch-xenstore returned after $(elapsed "$t") s (init-xenstore-domain to a serving store)"
    check "pid file $PIDFILE names the domain: $(cat $PIDFILE)" grep -q '^domid:[0-9]' $PIDFILE || return 1
    stubid=$(sed -n 's/^domid://p' $PIDFILE)
    t=$(now)
    check "first xenstore-read (dom0's kernel ring) answered within 10 s" \
        [ "$(timeout 10 xenstore-read /tool/xenstored/domid)" = "$stubid" ] || return 1
    info "first request took $(elapsed "$t") s"
    check "xen-init-dom0" timeout 60 xen-init-dom0 >/run/xen-init-dom0.log 2>&1 || return 1
    check "xenconsoled" xenconsoled --log=guest --log-dir=/var/log/xen/console || return 1
    check "dom0's name" [ "$(xsread /local/domain/0/name)" = Domain-0 ] || return 1
    check "xenstore-write" timeout 20 xenstore-write /harness/stub written || return 1
    check "xenstore-read" [ "$(xsread /harness/stub)" = written ] || return 1
    check "xenstore-ls" sh -c "timeout 20 xenstore-ls /local/domain/$stubid | grep -q 'name = \"Xenstore\"'" || return 1
    check "xl list shows the store's domain" sh -c "timeout 30 xl list | grep -q '^Xenstore  *$stubid '" || return 1
    for _ in $(seq 1 20); do grep -q '^stubdom: ready' $XS_LOG 2>/dev/null && break; sleep 0.5; done
    check "its console log ($XS_LOG) has the readiness line" grep -q '^stubdom: ready' $XS_LOG || return 1
    info "console: $(grep '^stubdom: \(Xen\|ready\)' $XS_LOG | tr '\n' ' ')"
}

# ---- 2. dom0's kernel served from the first moment -------------------------

s_dom0_kernel_ring() {
    if [ "$FLAVOUR" = stubdom ]; then
        # Every dom0 client goes through dom0's kernel ring here. (Nothing
        # can be queued before the start: init-xenstore-domain's
        # IOCTL_XENBUS_BACKEND_SETUP waits for dom0's requests in flight.)
        check "dom0's xenbus probed (control/feature-poweroff)" \
            xen-probe wait /local/domain/0/control/feature-poweroff --timeout 30 || return 1
        check "a request on dom0's ring" timeout 20 xen-probe --xenbus write /harness/ring yes || return 1
        check "its write is stored" [ "$(xsread /harness/ring)" = yes ] || return 1
        return 0
    fi
    check "no queued request to wait for (scenario 1 did not run)" [ -n "$EARLY_PID" ] || return 1
    wait "$EARLY_PID"
    rc=$?
    check "the write queued on dom0's ring before the start was answered (exit $rc: $(cat /run/early.out))" \
        [ $rc = 0 ] || return 1
    check "the queued write is stored" [ "$(xsread /harness/early)" = queued-before-start ] || return 1
    wait "$EARLY_TOOL_PID"
    rc=$?
    check "xenstore-write through dom0's ring before the start was answered (exit $rc: $(cat /run/early-tool.out))" [ $rc = 0 ] || return 1
    check "its write is stored" [ "$(xsread /harness/early-tool)" = yes ] || return 1
    check "dom0's xenbus probed (control/feature-poweroff)" \
        xen-probe wait /local/domain/0/control/feature-poweroff --timeout 30 || return 1
    check "a new request on dom0's ring" timeout 20 xen-probe --xenbus read /harness/early >/dev/null || return 1
}

# ---- 3. a guest with a disk and a network interface -------------------------

s_guest_devices() {
    brctl addbr xenbr0 2>/dev/null
    echo 0 >/sys/class/net/xenbr0/bridge/forward_delay
    ip addr add 10.99.0.1/24 dev xenbr0 2>/dev/null
    ip link set xenbr0 up
    dd if=/dev/zero of=/run/disk.img bs=1M count=8 2>/dev/null
    printf 'xen-harness-disk' | dd of=/run/disk.img conv=notrunc 2>/dev/null
    guest_cfg devices devices \
        "disk = ['format=raw,vdev=xvda,access=rw,target=/run/disk.img']" \
        "vif = ['bridge=xenbr0,mac=00:16:3e:00:99:02']"
    check "xl create (disk, vif)" create devices || return 1
    d=$(domid_of devices)
    info "guest devices is domain $d"
    if ! xen-probe wait /local/domain/$d/data/devices --timeout 120; then
        guest_console devices
        WHY="the guest reported nothing"
        return 1
    fi
    result=$(xsread /local/domain/$d/data/devices)
    check "the guest's disk and network: $result" [ "$result" = ok ] || { guest_console devices; return 1; }
    for dev in vbd/$d/51712 vif/$d/0; do
        check "backend $dev connected" [ "$(xsread /local/domain/0/backend/$dev/state)" = 4 ] || return 1
    done
    check "frontend vbd connected" [ "$(xsread /local/domain/$d/device/vbd/51712/state)" = 4 ] || return 1
    check "frontend vif connected" [ "$(xsread /local/domain/$d/device/vif/0/state)" = 4 ] || return 1
    check "dom0 pings the guest" ping -c 2 -W 5 10.99.0.2 >/dev/null || return 1
    check "the guest wrote its disk" \
        [ "$(dd if=/run/disk.img bs=512 skip=1 count=1 2>/dev/null | head -c 16)" = guest-wrote-this ] || return 1
    check "xl shutdown -w" timeout 120 xl shutdown -w devices >/dev/null 2>&1 || return 1
    check "its nodes are gone" gone /local/domain/$d || return 1
    check "its backends are gone" gone /local/domain/0/backend/vbd/$d || return 1
}

# ---- 4. several guests at once ----------------------------------------------

s_several_guests() {
    timeout 20 xenstore-write /harness/tx ""
    for g in g1 g2 g3; do guest_cfg $g workload; done
    guest_cfg g4 hold
    sed -i 's|probe=hold|probe=hold txpath=/harness/tx/g4|' /run/g4.cfg
    # g4 starts paused so that it may write /harness/tx before it runs.
    for g in g1 g2 g3; do create $g >/dev/null & done
    create g4 -p >/dev/null &
    wait
    for g in g1 g2 g3 g4; do check "$g created" domid_of $g >/dev/null || return 1; done
    d4=$(domid_of g4)
    timeout 20 xenstore-chmod /harness/tx n0 b$d4
    xl unpause g4
    for g in g1 g2 g3; do
        check "$g's workload runs" workload_running "$(domid_of $g)" || { guest_console $g; return 1; }
    done
    check "g4 holds a transaction" xen-probe wait /local/domain/$d4/data/hold/holding --timeout 120 ||
        { guest_console g4; return 1; }
    if [ -n "$OURS" ]; then
        check "g4 is accounted (quota $d4)" timeout 20 xenstore-control quota $d4 >/dev/null || return 1
    fi
    check "@releaseDomain fires for g4 destroyed mid-transaction" \
        xen-probe await-release $d4 --timeout 60 -- xl destroy g4 || return 1
    check "g4's uncommitted write never appears" sh -c "! xenstore-exists /harness/tx/g4" || return 1
    if [ -n "$OURS" ]; then
        check "g4's watches and quotas are gone" sh -c "! timeout 20 xenstore-control quota $d4 >/dev/null 2>&1" ||
            return 1
    fi
    for g in g1 g2 g3; do check "$g unaffected" advancing "$(domid_of $g)" || return 1; done
    # A guest created after the death works. (Xen 4.17's xl cannot ask for
    # a domid, and Xen hands them out in sequence: g4's is not reused.)
    guest_cfg g5 workload
    check "xl create g5" create g5 || return 1
    d5=$(domid_of g5)
    check "g5 works" workload_running "$d5" || { guest_console g5; return 1; }
    check "g5's workload" finish_workload "$d5" || return 1
    timeout 60 xl destroy g5
    for g in g1 g2 g3; do check "$g's workload" finish_workload "$(domid_of $g)" || return 1; done
    for g in g1 g2 g3; do timeout 60 xl destroy $g; done
    return 0
}

# ---- 5. live update with guests running -------------------------------------

# live_update BINARY [xenstore-control options]: one update, checked.
live_update() {
    local bin=$1 pid t out rc
    shift
    pid=$(daemon_pid)
    t=$(now)
    out=$(timeout 120 xenstore-control live-update "$@" -t 60 "$bin" 2>&1)
    rc=$?
    info "live update to $bin: exit $rc, '$out', $(elapsed "$t") s"
    check "live update to $bin" [ $rc = 0 ] || return 1
    check "same pid after the update" [ "$(daemon_pid)" = "$pid" ] || return 1
    check "now running $bin" [ "$(readlink /proc/$pid/exe)" = "$bin" ] || return 1
    check "the guest goes on" advancing "$LU_DOMID" || return 1
    check "dom0's socket workload goes on" advancing 0 harness-lu || return 1
}

s_live_update() {
    guest_cfg lu workload
    check "xl create lu" create lu || return 1
    LU_DOMID=$(domid_of lu)
    check "lu's workload runs" workload_running $LU_DOMID || { guest_console lu; return 1; }
    # A socket client across the updates too (kept connection, watch).
    xen-probe workload /local/domain/0/harness-lu >/run/dom0-lu.log 2>&1 &
    wl=$!
    check "dom0's workload runs" xen-probe wait /local/domain/0/harness-lu/status --timeout 60 || return 1
    if [ "$FLAVOUR" = rxenstored ]; then
        live_update $R_XENSTORED || return 1
        live_update $C_XENSTORED || return 1
        live_update $R_XENSTORED || return 1
    else
        live_update $R_XENSTORED || return 1
        live_update $R_XENSTORED || return 1
        live_update $C_XENSTORED || return 1
    fi
    check "dom0's socket workload" finish_workload 0 harness-lu || return 1
    wait $wl
    check "lu's workload" finish_workload $LU_DOMID || return 1
    check "@releaseDomain after the updates" xen-probe await-release $LU_DOMID --timeout 60 -- xl destroy lu || return 1
}

# ---- 6. crash restart with guests running -----------------------------------

s_crash_restart() {
    guest_cfg cr workload
    check "xl create cr" create cr || return 1
    d=$(domid_of cr)
    check "cr's workload runs" workload_running $d || { guest_console cr; return 1; }
    pid=$(daemon_pid)
    acked=$(iterations $d data/probe)
    # Stopped first, so that the guest's next request is surely in flight
    # (in its ring, unanswered) when the daemon dies.
    kill -STOP "$pid"
    sleep 2
    kill -9 "$pid"
    info "killed the daemon (pid $pid) at iteration $acked, a request in flight"
    sleep 1
    # As a supervisor (systemd, runit) would: in the foreground, with the
    # same options; then at once a socket client.
    rm -f $PIDFILE
    $XS_BIN --no-fork --pid-file $PIDFILE $XS_ARGS &
    t=$(now)
    for _ in $(seq 1 100); do [ -S /var/run/xenstored/socket ] && [ -s $PIDFILE ] && break; sleep 0.1; done
    check "first socket request after the restart answered within 10 s" \
        timeout 10 xenstore-read -s /local/domain/0/name >/dev/null || return 1
    info "restarted and answering after $(elapsed "$t") s, pid $(daemon_pid)"
    grep "ring resumed\|cannot be resumed\|was open before the restart" $XS_LOG | tail -n 4 |
        while read -r line; do info "daemon: ${line#*rxenstored: }"; done
    check "acknowledged writes kept" [ "$(iterations $d data/probe)" -ge "$acked" ] || return 1
    check "the guest goes on after the restart" advancing $d || { guest_console cr; return 1; }
    # The transaction in flight at the kill, if one was, is lost (once).
    check "cr's workload" finish_workload $d data/probe 1 || { guest_console cr; return 1; }
    # xenconsoled's connection died with the daemon: it does not reconnect.
    killall xenconsoled 2>/dev/null
    xenconsoled --log=guest --log-dir=/var/log/xen/console
    check "@releaseDomain after the restart" xen-probe await-release $d --timeout 60 -- xl destroy cr || return 1
}

run_all() {
    if [ "$FLAVOUR" = stubdom ]; then
        info "xenstored: rxenstored's stub domain ($STUBDOM_IMAGE, $(wc -c <$STUBDOM_IMAGE) bytes)"
        scenario start-stub-domain s_start_stub_domain stubdom
    else
        info "xenstored: $FLAVOUR ($XS_BIN $XS_ARGS)"
        scenario start-as-host s_start_as_host "rxenstored cxenstored"
    fi
    scenario dom0-kernel-ring s_dom0_kernel_ring
    scenario guest-devices s_guest_devices
    scenario several-guests s_several_guests
    scenario crash-restart s_crash_restart rxenstored
    scenario live-update s_live_update "rxenstored cxenstored"
    [ $FAILED = 0 ]
}
