//! `xen-probe`: the xenstore client of the Xen test harness (`tests/xen`).
//!
//! It runs inside dom0 (over the daemon's socket, or dom0's kernel ring
//! through `/dev/xen/xenbus`) and inside guests (their kernel ring), under
//! the real hypervisor, and checks what the harness's scenarios need: that
//! a request is answered, that watches fire, that a guest's workload of
//! transactions, writes, reads and watch events goes on with nothing lost
//! while the daemon is updated or restarted. Every wait has a deadline;
//! a failure says what was expected and exits non-zero.

mod xenbus;

use std::io;
use std::process::{Command, ExitCode};
use std::time::{Duration, Instant};

use clap::{Parser, Subcommand};
use wire::client::{Client, Reply, Transport};

type Conn = Client<Box<dyn Transport>>;

#[derive(Parser, Debug)]
#[command(about = "xenstore checks for the Xen test harness")]
struct Args {
    /// Talk through /dev/xen/xenbus (the kernel's ring) instead of the
    /// daemon's socket ($XENSTORED_PATH, else /var/run/xenstored/socket);
    /// also what happens when there is no socket.
    #[arg(long)]
    xenbus: bool,
    /// How long one request may wait for its reply.
    #[arg(long, default_value_t = 30)]
    reply_timeout: u64,
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand, Debug)]
enum Cmd {
    /// Prints a node's value.
    Read { path: String },
    /// Writes a node.
    Write { path: String, value: String },
    /// Waits, with a watch, until PATH exists (and has VALUE).
    Wait {
        path: String,
        #[arg(long)]
        equals: Option<String>,
        #[arg(long, default_value_t = 60)]
        timeout: u64,
    },
    /// Transactions, writes, reads and watch events in a loop under DIR
    /// until DIR/stop exists; progress in DIR/status, the verdict in
    /// DIR/result ("ok ..." or "fail ...").
    Workload {
        dir: String,
        /// The longest any one step may take before it counts as a stall.
        #[arg(long, default_value_t = 30)]
        step_timeout: u64,
    },
    /// Starts a transaction, writes TX_PATH in it, writes DIR/holding
    /// outside it, and waits forever (to be destroyed mid-transaction).
    HoldTransaction { dir: String, tx_path: String },
    /// Watches @releaseDomain, runs the command, and waits until the event
    /// fires and /local/domain/DOMID is gone.
    AwaitRelease {
        domid: u32,
        #[arg(long, default_value_t = 60)]
        timeout: u64,
        #[arg(trailing_var_arg = true)]
        command: Vec<String>,
    },
}

fn connect(args: &Args) -> io::Result<Conn> {
    let path = std::env::var("XENSTORED_PATH").unwrap_or_else(|_| "/var/run/xenstored/socket".into());
    // Without a socket (the store in a stub domain), the kernel's ring, as
    // libxenstore does.
    let transport: Box<dyn Transport> = if args.xenbus || !std::path::Path::new(&path).exists() {
        Box::new(xenbus::Xenbus::open()?)
    } else {
        Box::new(
            std::os::unix::net::UnixStream::connect(&path)
                .map_err(|e| io::Error::new(e.kind(), format!("{path}: {e}")))?,
        )
    };
    let mut c = Client::over(transport);
    c.set_reply_timeout(Duration::from_secs(args.reply_timeout));
    Ok(c)
}

/// A check that did not hold.
#[derive(Debug)]
struct Failed(String);

impl From<io::Error> for Failed {
    fn from(e: io::Error) -> Failed {
        Failed(e.to_string())
    }
}

type Result<T> = std::result::Result<T, Failed>;

fn fail<T>(msg: impl Into<String>) -> Result<T> {
    Err(Failed(msg.into()))
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

fn expect_ok(what: &str, reply: Reply) -> Result<Vec<u8>> {
    match reply {
        Reply::Ok(p) => Ok(p),
        Reply::Err(e) => fail(format!("{what}: {e}")),
    }
}

fn main() -> ExitCode {
    let args = Args::parse();
    match run(&args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(Failed(msg)) => {
            eprintln!("xen-probe: {msg}");
            ExitCode::FAILURE
        }
    }
}

fn run(args: &Args) -> Result<()> {
    let mut c = connect(args)?;
    match &args.cmd {
        Cmd::Read { path } => {
            let v = expect_ok(&format!("read {path}"), c.read(path)?)?;
            println!("{}", text(&v));
            Ok(())
        }
        Cmd::Write { path, value } => expect_ok(&format!("write {path}"), c.write(path, value)?).map(drop),
        Cmd::Wait { path, equals, timeout } => wait(&mut c, path, equals.as_deref(), Duration::from_secs(*timeout)),
        Cmd::Workload { dir, step_timeout } => workload(&mut c, dir, Duration::from_secs(*step_timeout)),
        Cmd::HoldTransaction { dir, tx_path } => hold_transaction(&mut c, dir, tx_path),
        Cmd::AwaitRelease { domid, timeout, command } => {
            await_release(&mut c, *domid, command, Duration::from_secs(*timeout))
        }
    }
}

/// Whether `path` exists and (if asked) has `equals` as its value.
fn matches(c: &mut Conn, path: &str, equals: Option<&str>) -> Result<(bool, String)> {
    match c.read(path)? {
        Reply::Ok(v) => {
            let v = text(&v);
            Ok((equals.is_none_or(|e| e == v), format!("{v:?}")))
        }
        Reply::Err(e) => Ok((false, e)),
    }
}

fn wait(c: &mut Conn, path: &str, equals: Option<&str>, timeout: Duration) -> Result<()> {
    let deadline = Instant::now() + timeout;
    expect_ok(&format!("watch {path}"), c.watch(path, "xen-probe-wait")?)?;
    loop {
        let (done, seen) = matches(c, path, equals)?;
        if done {
            return Ok(());
        }
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() || c.next_event(left).is_none() {
            return fail(format!("{path}: still {seen} after {timeout:?}"));
        }
    }
}

/// What the workload has done so far.
#[derive(Debug, Default)]
struct Progress {
    iterations: u64,
    events: u64,
    retries: u64,
    /// Transactions whose read did not give back their own write, and
    /// which then ended with EAGAIN: what a transaction begun before a
    /// crash restart does (the daemon adopts it as a fresh one that cannot
    /// commit). Committing after such a read would be a failure.
    lost: u64,
    slowest: Duration,
}

impl Progress {
    fn summary(&self) -> String {
        format!(
            "iterations={} events={} eagain={} lost_tx={} slowest_ms={}",
            self.iterations,
            self.events,
            self.retries,
            self.lost,
            self.slowest.as_millis()
        )
    }
}

fn workload(c: &mut Conn, dir: &str, step_timeout: Duration) -> Result<()> {
    let mut progress = Progress::default();
    let outcome = workload_loop(c, dir, step_timeout, &mut progress);
    let verdict = match &outcome {
        Ok(()) => format!("ok {}", progress.summary()),
        Err(Failed(why)) => format!("fail {why} after {}", progress.summary()),
    };
    eprintln!("xen-probe workload {dir}: {verdict}");
    // The verdict is written even after a failure, so that dom0 sees it.
    c.write(format!("{dir}/result"), &verdict)?;
    outcome
}

fn workload_loop(c: &mut Conn, dir: &str, step_timeout: Duration, p: &mut Progress) -> Result<()> {
    let ping = format!("{dir}/ping");
    let token = "xen-probe-ping";
    expect_ok("write ping", c.write(&ping, "0")?)?;
    expect_ok("watch ping", c.watch(&ping, token)?)?;
    let mut last_status = Instant::now();
    let mut i = 0u64;
    loop {
        i += 1;
        let started = Instant::now();
        // Events of earlier steps (the initial one, or a re-fire after a
        // restart) are not this step's.
        p.events += c.take_events().len() as u64;
        let value = i.to_string();
        loop {
            let tx = c.start_tx()?;
            expect_ok("write ping in transaction", c.write_tx(tx, &ping, &value)?)?;
            expect_ok("write counter in transaction", c.write_tx(tx, format!("{dir}/counter"), &value)?)?;
            let seen = expect_ok("read ping in transaction", c.read_tx(tx, &ping)?)?;
            let mismatch = seen != value.as_bytes();
            match c.transaction_end(tx, true)? {
                Reply::Ok(_) if mismatch => {
                    return fail(format!("transaction read {:?}, wrote {value}, and committed", text(&seen)));
                }
                Reply::Ok(_) => break,
                Reply::Err(e) if e == "EAGAIN" && mismatch => p.lost += 1,
                Reply::Err(e) if e == "EAGAIN" => p.retries += 1,
                Reply::Err(e) => return fail(format!("commit of step {i}: {e}")),
            }
        }
        let left = step_timeout.saturating_sub(started.elapsed());
        match c.next_event(left) {
            Some((path, tok)) if tok == token.as_bytes() && text(&path).ends_with("/ping") => p.events += 1,
            Some((path, tok)) => return fail(format!("unexpected event {:?} {:?}", text(&path), text(&tok))),
            None => return fail(format!("no watch event for step {i} within {step_timeout:?}")),
        }
        let now = expect_ok("read ping", c.read(&ping)?)?;
        if now != value.as_bytes() {
            return fail(format!("read {:?} after writing {value}", text(&now)));
        }
        expect_ok("write counter", c.write(format!("{dir}/plain"), &value)?)?;
        p.iterations = i;
        p.slowest = p.slowest.max(started.elapsed());
        if started.elapsed() > step_timeout {
            return fail(format!("step {i} took {:?}", started.elapsed()));
        }
        if last_status.elapsed() >= Duration::from_secs(1) {
            last_status = Instant::now();
            expect_ok("write status", c.write(format!("{dir}/status"), p.summary())?)?;
        }
        if c.read(format!("{dir}/stop"))?.is_ok() {
            return Ok(());
        }
    }
}

fn hold_transaction(c: &mut Conn, dir: &str, tx_path: &str) -> Result<()> {
    let tx = c.start_tx()?;
    expect_ok("write in transaction", c.write_tx(tx, tx_path, "uncommitted")?)?;
    expect_ok("watch", c.watch(format!("{dir}/watched"), "xen-probe-hold")?)?;
    expect_ok("write holding", c.write(format!("{dir}/holding"), tx.to_string())?)?;
    eprintln!("xen-probe: holding transaction {tx}");
    loop {
        std::thread::sleep(Duration::from_secs(3600));
    }
}

fn await_release(c: &mut Conn, domid: u32, command: &[String], timeout: Duration) -> Result<()> {
    let deadline = Instant::now() + timeout;
    expect_ok("watch @releaseDomain", c.watch("@releaseDomain", "xen-probe-release")?)?;
    // The initial event, and anything already queued, are not this death.
    c.sync()?;
    c.take_events();
    let started = Instant::now();
    if let Some((program, rest)) = command.split_first() {
        let status = Command::new(program).args(rest).status()?;
        if !status.success() {
            return fail(format!("{command:?}: {status}"));
        }
    }
    let left = deadline.saturating_duration_since(Instant::now());
    if c.next_event(left).is_none() {
        return fail(format!("no @releaseDomain within {timeout:?}"));
    }
    let fired = started.elapsed();
    let home = format!("/local/domain/{domid}");
    while c.read(&home)?.is_ok() {
        if Instant::now() >= deadline {
            return fail(format!("{home} still there {timeout:?} after the command"));
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    println!("released domid={domid} event_after_ms={}", fired.as_millis());
    Ok(())
}
