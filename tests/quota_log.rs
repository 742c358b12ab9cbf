//! What an operator sees when a guest hits a quota: the daemon's log line
//! and CONTROL `quota`, against the real daemon (dom0 over the socket, the
//! guest over a simulated ring, `--sim-rings`).
//!
//! Guards against: refusals (ENOSPC on WATCH, TRANSACTION_START, ...) with
//! no hint of which limit was hit; a log line that does not name the
//! domain, the quota, its value and limit and the option that raises it; a
//! guest that floods the log by repeating a refused request; a CONTROL
//! `quota` that shows limits without the use next to them.

use std::time::{Duration, Instant};

use rxenstored_platform::sim::{SimGuest, nul};
use rxenstored_suite::daemon::{self, TestDaemon, rxenstored_bin};
use wire::Op;
use wire::client::{Client, Reply};

const T: Duration = Duration::from_secs(10);

/// A guest over a simulated ring, introduced by dom0 with a home it owns.
fn guest(rings: &std::path::Path, dom0: &mut Client, domid: u16) -> SimGuest {
    let mut g = SimGuest::create(rings, domid).expect("guest files");
    let home = format!("/local/domain/{domid}");
    assert_eq!(dom0.mkdir(&home).expect("io"), Reply::ok_nul());
    assert_eq!(dom0.set_perms(&home, &[&format!("n{domid}")]).expect("io"), Reply::ok_nul());
    let port = format!("{}", 10 + domid);
    let intro = nul(&[&domid.to_string(), "0", &port]);
    assert_eq!(dom0.request(Op::Introduce, 0, &intro).expect("io"), Reply::ok_nul());
    g.wait_connected(T).expect("INTRODUCE connects the ring");
    g
}

/// The daemon's log lines that contain `needle`, once `want` of them are
/// there (the log is written after the replies go out) or after a while.
fn lines_with(d: &TestDaemon, needle: &str, want: usize) -> Vec<String> {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let lines: Vec<String> = d.log().lines().filter(|l| l.contains(needle)).map(str::to_string).collect();
        if lines.len() >= want || Instant::now() > deadline {
            return lines;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn err(name: &str) -> Reply {
    Reply::err_from(name)
}

#[test]
fn a_guest_hitting_quotas_is_logged_once_per_quota_and_interval() {
    if !rxenstored_bin().is_some_and(|b| b.is_file()) {
        eprintln!("SKIP: rxenstored not built");
        return;
    }
    let rings = tempfile::tempdir().expect("rings directory");
    let rings_arg = rings.path().display().to_string();
    let d = daemon::start_rx(&["--sim-rings", &rings_arg, "-W", "3", "--quota-log-interval", "1"])
        .expect("rxenstored starts");
    let mut dom0 = d.connect();
    let mut g = guest(rings.path(), &mut dom0, 5);
    assert_eq!(g.request(Op::Watch, 0, &nul(&["a", "1"])).expect("io"), Reply::ok_nul());
    assert_eq!(g.request(Op::Watch, 0, &nul(&["b", "2"])).expect("io"), Reply::ok_nul());
    for _ in 0..3 {
        assert_eq!(g.request(Op::Watch, 0, &nul(&["c", "3"])).expect("io"), err("ENOSPC"));
    }
    // A limit of the domain's own (SET_QUOTA), said so in the line.
    assert_eq!(dom0.request(Op::SetQuota, 0, &nul(&["5", "transactions", "1"])).expect("io"), Reply::ok_nul());
    assert_eq!(g.request(Op::TransactionStart, 0, b"\0").expect("io"), err("ENOSPC"));

    let watches = lines_with(&d, "domain 5: WATCH refused", 1);
    assert_eq!(watches.len(), 1, "one line for three refusals within the interval: {watches:#?}");
    assert!(
        watches[0].ends_with(
            "domain 5: WATCH refused: watches quota reached (3 watches with this request, limit 3); \
             raise it with --watch-nb N (-W), or --quota watches=N"
        ),
        "{watches:#?}"
    );
    assert!(watches[0].contains("WARN"), "logged as a warning: {watches:#?}");
    let tx = lines_with(&d, "domain 5: TRANSACTION_START refused", 1);
    assert_eq!(tx.len(), 1, "{tx:#?}");
    assert!(
        tx[0].ends_with(
            "transactions quota reached (1 open transactions with this request, limit 1); \
             raise it with --transaction N (-t), or --quota transactions=N \
             (domain 5's own limit, set by SET_QUOTA: set it again there)"
        ),
        "{tx:#?}"
    );

    // Once the interval is over, the next turn tells the two left unlogged.
    std::thread::sleep(Duration::from_millis(1200));
    assert_eq!(dom0.write("/tick", "1").expect("io"), Reply::ok_nul());
    let more = lines_with(&d, "more refusal(s)", 1);
    assert_eq!(more.len(), 1, "{more:#?}\n{}", d.log());
    assert!(more[0].contains("domain 5: 2 more refusal(s) by the watches quota in the last 1 s"), "{more:#?}");

    // CONTROL quota: the guest's use next to its limits.
    let text = dom0.request(Op::Control, 0, &nul(&["quota", "5"])).expect("io");
    let Reply::Ok(text) = text else { panic!("CONTROL quota 5: {text:?}") };
    let text = String::from_utf8_lossy(&text).into_owned();
    assert!(text.contains("watches         :        2 of        3\n"), "{text}");
    assert!(text.contains("transactions    :        0 of        1\n"), "{text}");
    let table = dom0.request(Op::Control, 0, &nul(&["quota"])).expect("io");
    let Reply::Ok(table) = table else { panic!("CONTROL quota: {table:?}") };
    let table = String::from_utf8_lossy(&table).into_owned();
    assert!(table.contains("watches          :        3 Watches per domain; highest use 2 (domain 5)\n"), "{table}");
}
