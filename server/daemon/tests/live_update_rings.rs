//! Live update with simulated guests (`rxenstored --sim-rings DIR`): the
//! new process must take each guest's ring over as it is — no reset, the
//! bytes in it and a half-received request carried on — with the guests'
//! watches, relative ones included. Guards against a restore that
//! re-introduces rings (losing in-flight requests) or loses guests'
//! watches.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use rxenstored_platform::sim::{SimGuest, nul};
use wire::Op;
use wire::client::{Client, Reply};

const T: Duration = Duration::from_secs(10);

struct Daemon {
    child: Child,
    dir: PathBuf,
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn lu(args: &[&str]) -> Vec<u8> {
    let mut p = b"live-update\0".to_vec();
    for a in args {
        p.extend_from_slice(a.as_bytes());
        p.push(0);
    }
    p
}

#[test]
fn guests_keep_rings_watches_and_half_sent_requests() {
    let dir = std::env::temp_dir().join(format!("rxs-lu-rings-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(dir.join("rings")).expect("dir");
    let socket = dir.join("socket");
    let bin = env!("CARGO_BIN_EXE_rxenstored");
    let child = Command::new(bin)
        .args(["--no-fork", "--log-level", "warn", "--sim-rings"])
        .arg(dir.join("rings"))
        .env("XENSTORED_RUNDIR", &dir)
        .env_remove("XENSTORED_PATH")
        .env_remove("RUST_LOG")
        .stdin(Stdio::null())
        .spawn()
        .expect("rxenstored starts");
    let d = Daemon { child, dir: dir.clone() };
    let deadline = Instant::now() + T;
    while Client::connect(&socket).is_err() {
        assert!(Instant::now() < deadline, "the daemon never listened");
        std::thread::sleep(Duration::from_millis(10));
    }
    let mut dom0 = Client::connect(&socket).expect("socket");
    let mut guests: Vec<SimGuest> = (1..=20u16)
        .map(|domid| {
            let mut g = SimGuest::create(&d.dir.join("rings"), domid).expect("guest files");
            g.set_timeout(T);
            let home = format!("/local/domain/{domid}");
            assert!(dom0.mkdir(&home).expect("io").is_ok());
            assert!(dom0.set_perms(&home, &[&format!("n{domid}")]).expect("io").is_ok());
            let port = format!("{}", 10 + domid);
            assert!(dom0.request(Op::Introduce, 0, &nul(&[&domid.to_string(), "0", &port])).expect("io").is_ok());
            g.wait_connected(T).expect("connected");
            assert!(g.request(Op::Watch, 0, &nul(&["x", "rel"])).expect("watch").is_ok());
            assert_eq!(g.next_event(T).expect("event"), Some((b"x".to_vec(), b"rel".to_vec())));
            assert!(g.write(&format!("/local/domain/{domid}/before"), b"1").expect("write").is_ok());
            g
        })
        .collect();
    // Guest 1 leaves half a WRITE in its ring (header plus 2 bytes).
    let mut half = Vec::new();
    wire::encode(Op::Write, 4242, 0, b"/local/domain/1/half\0ok", &mut half);
    guests[0].send_raw(&half[..wire::HEADER_LEN + 2]).expect("half");
    std::thread::sleep(Duration::from_millis(50));
    dom0.set_reply_timeout(Duration::from_secs(20));
    assert_eq!(dom0.request(Op::Control, 0, &lu(&["-f", bin])).expect("-f"), Reply::ok_nul());
    let r = dom0.request(Op::Control, 0, &lu(&["-s", "-t", "5"])).expect("-s");
    assert_eq!(r, Reply::ok_nul());
    // The rest of the half request, then its reply from the new process.
    guests[0].send_raw(&half[wire::HEADER_LEN + 2..]).expect("rest");
    let reply = guests[0].wait_reply(4242).expect("reply to the half-sent write");
    assert_eq!(reply.header.msg_type, Op::Write.code());
    assert_eq!(dom0.read("/local/domain/1/half").expect("read"), Reply::ok_from("ok"));
    for (i, g) in guests.iter_mut().enumerate() {
        let domid = i + 1;
        assert_eq!(dom0.read(format!("/local/domain/{domid}/before")).expect("read"), Reply::ok_from("1"));
        assert!(dom0.write(format!("/local/domain/{domid}/x"), b"v").expect("write").is_ok());
        assert_eq!(g.next_event(T).expect("event"), Some((b"x".to_vec(), b"rel".to_vec())), "guest {domid}'s watch");
        assert!(g.write(&format!("/local/domain/{domid}/after"), b"2").expect("write after").is_ok());
        assert_eq!(g.read(&format!("/local/domain/{domid}/after")).expect("read"), Reply::ok_from("2"));
    }
}
