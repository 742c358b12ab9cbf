//! The few operating-system calls the tool needs: CPU affinity, a daemon's
//! memory figures from `/proc`, and the signal thread that stops every
//! daemon when the tool is interrupted.

use std::io;
use std::sync::atomic::{AtomicI32, Ordering};

/// Pins the calling thread to `cpu` (`sched_setaffinity(0, …)`); threads it
/// spawns afterwards inherit the mask.
pub fn pin_current_thread(cpu: usize) -> io::Result<()> {
    if cpu >= libc::CPU_SETSIZE as usize {
        return Err(io::Error::other(format!("CPU {cpu} out of range")));
    }
    // SAFETY: `cpu_set_t` is plain data for which all-zero is the empty set;
    // CPU_SET writes inside it (cpu < CPU_SETSIZE, checked above);
    // sched_setaffinity reads `size_of::<cpu_set_t>()` bytes from it.
    let rc = unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(cpu, &mut set);
        libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set)
    };
    if rc == 0 { Ok(()) } else { Err(io::Error::last_os_error()) }
}

/// Runs `f` on a new thread named `name`, pinned to `cpu` if given (the
/// caller's own affinity stays as it is), and returns its result.
pub fn on_cpu<T: Send + 'static>(
    cpu: Option<usize>,
    name: &str,
    f: impl FnOnce() -> crate::conn::Res<T> + Send + 'static,
) -> crate::conn::Res<T> {
    use crate::conn::Fail;
    let h = std::thread::Builder::new()
        .name(name.into())
        .spawn(move || {
            if let Some(cpu) = cpu {
                pin_current_thread(cpu).map_err(|e| Fail::Wrong(format!("pin to CPU {cpu}: {e}")))?;
            }
            f()
        })
        .map_err(|e| Fail::Wrong(format!("spawn: {e}")))?;
    h.join().unwrap_or_else(|_| Err(Fail::Wrong(format!("{name} thread panicked"))))
}

/// Reads one `kB` field (`VmRSS`, `VmHWM`) of `/proc/<pid>/status`, in bytes.
pub fn proc_status_kb(pid: i32, field: &str) -> io::Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    status
        .lines()
        .find_map(|l| {
            let rest = l.strip_prefix(field)?.strip_prefix(':')?;
            rest.trim().strip_suffix("kB")?.trim().parse::<u64>().ok()
        })
        .map(|kb| kb * 1024)
        .ok_or_else(|| io::Error::other(format!("no {field} in /proc/{pid}/status")))
}

/// CPU time a process has used, user and system, in seconds: its own
/// threads, live and exited (`utime`, `stime` of `/proc/<pid>/stat`).
pub fn cpu_times(pid: i32) -> io::Result<(f64, f64)> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    // Fields after the parenthesised command name, from field 3 (state):
    // utime and stime are fields 14 and 15.
    let rest = stat
        .rsplit_once(") ")
        .map(|(_, r)| r)
        .ok_or_else(|| io::Error::other(format!("unreadable /proc/{pid}/stat")))?;
    let mut fields = rest.split_ascii_whitespace().skip(11);
    let mut tick = || -> io::Result<f64> {
        let t: u64 = fields
            .next()
            .and_then(|f| f.parse().ok())
            .ok_or_else(|| io::Error::other(format!("no CPU times in /proc/{pid}/stat")))?;
        // SAFETY: sysconf has no memory-safety preconditions.
        let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1);
        Ok(t as f64 / hz as f64)
    };
    Ok((tick()?, tick()?))
}

/// Write end of the pipe through which the signal handler wakes the
/// signal thread.
static SIGNAL_PIPE: AtomicI32 = AtomicI32::new(-1);

extern "C" fn on_signal(sig: libc::c_int) {
    let byte = sig as u8;
    // SAFETY: write(2) is async-signal-safe; the buffer is one valid byte.
    unsafe { libc::write(SIGNAL_PIPE.load(Ordering::Relaxed), (&raw const byte).cast(), 1) };
}

/// Catches SIGINT, SIGTERM and SIGHUP with a handler that only writes the
/// signal number to a pipe, and starts a thread that reads it, stops every
/// daemon still running (`launch::stop_all`) and exits with 128 + the signal number. (A handler,
/// not a blocked mask and `sigwait`: child processes would inherit the
/// mask, and the daemons would then ignore our SIGTERM. Handlers are reset
/// by exec.)
pub fn install_signal_thread() -> io::Result<()> {
    let mut fds = [0 as libc::c_int; 2];
    // SAFETY: `fds` is a valid array of two ints for pipe2 to fill.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
        return Err(io::Error::last_os_error());
    }
    let [read_fd, write_fd] = fds;
    SIGNAL_PIPE.store(write_fd, Ordering::Relaxed);
    std::thread::Builder::new().name("signals".into()).spawn(move || {
        let mut byte = 0u8;
        loop {
            // SAFETY: reads one byte into a valid one-byte buffer.
            let n = unsafe { libc::read(read_fd, (&raw mut byte).cast(), 1) };
            if n == 1 {
                break;
            }
            if n < 0 && io::Error::last_os_error().kind() == io::ErrorKind::Interrupted {
                continue;
            }
            return;
        }
        let sig = i32::from(byte);
        eprintln!("xsload: signal {sig}: stopping the daemons");
        launch::stop_all();
        std::process::exit(128 + sig);
    })?;
    for sig in [libc::SIGINT, libc::SIGTERM, libc::SIGHUP] {
        // SAFETY: `sa` is zero-initialised plain data (an empty mask, no
        // flags) before the fields are set; `on_signal` has the signature
        // sigaction expects for a handler without SA_SIGINFO and only calls
        // async-signal-safe functions.
        let rc = unsafe {
            let mut sa: libc::sigaction = std::mem::zeroed();
            sa.sa_sigaction = on_signal as extern "C" fn(libc::c_int) as libc::sighandler_t;
            sa.sa_flags = libc::SA_RESTART;
            libc::sigemptyset(&mut sa.sa_mask);
            libc::sigaction(sig, &sa, std::ptr::null_mut())
        };
        if rc != 0 {
            return Err(io::Error::last_os_error());
        }
    }
    Ok(())
}
