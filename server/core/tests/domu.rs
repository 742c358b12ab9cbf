//! PROTOCOL.md §16 lines that need an unprivileged domain, run against the
//! protocol core with connections acting as guests (their rings, in the
//! daemon). Guards against permission, quota and watch-filtering mistakes
//! that a dom0 socket can never see.

mod support;

use support::{Harness, args, err, ev, ok, okk};
use wire::Op;

/// dom0 sets up `/local/domain/<d>` as a toolstack does: `n0 r<d>`.
fn with_domain_home(h: &mut Harness, d: u16) -> rxenstored_core::ConnId {
    let s = h.socket();
    let home = format!("/local/domain/{d}");
    assert_eq!(h.call(s, Op::Mkdir, 0, &args(&[&home])), okk());
    assert_eq!(h.call(s, Op::SetPerms, 0, &args(&[&home, "n0", &format!("r{d}")])), okk());
    s
}

#[test]
fn l13_relative_paths_resolve_under_the_domain_home() {
    let mut h = Harness::default();
    let s = with_domain_home(&mut h, 5);
    h.call(s, Op::SetPerms, 0, &args(&["/local/domain/5", "n5"])).unwrap();
    let g = h.domu(5);
    assert_eq!(h.call(g, Op::Write, 0, b"x/y\0v"), okk());
    assert_eq!(h.call(s, Op::Read, 0, &args(&["/local/domain/5/x/y"])), ok("v"));
    assert_eq!(h.call(s, Op::GetPerms, 0, &args(&["/local/domain/5/x/y"])), ok("n5\0"));
}

#[test]
fn l15_path_length_limit_applies_to_guests_only() {
    let mut h = Harness::default();
    let s = with_domain_home(&mut h, 5);
    h.call(s, Op::SetPerms, 0, &args(&["/local/domain/5", "n5"])).unwrap();
    let g = h.domu(5);
    let long = "a".repeat(2048);
    assert_eq!(h.call(g, Op::Write, 0, format!("/local/domain/5/{long}\0v").as_bytes()), err("EINVAL"));
    // 2047 characters in short components (a 2047-character name would
    // break the parent's node-size quota instead).
    let fits = vec!["a".repeat(99); 20].join("/") + "/" + &"b".repeat(47);
    assert_eq!(fits.len(), 2047);
    assert_eq!(h.call(g, Op::Write, 0, format!("/local/domain/5/{fits}\0v").as_bytes()), okk());
    assert_eq!(h.call(s, Op::Write, 0, format!("/local/domain/5/{long}\0v").as_bytes()), okk());
}

#[test]
fn l18_guest_creations_are_owned_by_the_guest() {
    let mut h = Harness::default();
    let s = h.socket();
    h.call(s, Op::Mkdir, 0, &args(&["/w"])).unwrap();
    h.call(s, Op::SetPerms, 0, &args(&["/w", "n0", "b5"])).unwrap();
    let g = h.domu(5);
    assert_eq!(h.call(g, Op::Write, 0, b"/w/x/y\0"), okk());
    assert_eq!(h.call(s, Op::GetPerms, 0, &args(&["/w/x"])), ok("n5\0b5\0"));
    assert_eq!(h.call(s, Op::GetPerms, 0, &args(&["/w/x/y"])), ok("n5\0b5\0"));
}

#[test]
fn l33_to_l36_access_decisions() {
    let mut h = Harness::default();
    let s = h.socket();
    for (path, perms) in
        [("/own", &["n5"][..]), ("/def", &["r0"][..]), ("/ovr", &["b0", "n7"][..]), ("/first", &["n0", "r7", "b7"][..])]
    {
        h.call(s, Op::Write, 0, format!("{path}\0v").as_bytes()).unwrap();
        let mut a = vec![path];
        a.extend_from_slice(perms);
        assert_eq!(h.call(s, Op::SetPerms, 0, &args(&a)), okk());
    }
    let (d5, d7, d8) = (h.domu(5), h.domu(7), h.domu(8));
    // 33: the owner has full access whatever its letter.
    assert_eq!(h.call(d5, Op::Read, 0, &args(&["/own"])), ok("v"));
    assert_eq!(h.call(d5, Op::Write, 0, b"/own\0w"), okk());
    // 34: the owner entry's letter is the default.
    assert_eq!(h.call(d7, Op::Read, 0, &args(&["/def"])), ok("v"));
    assert_eq!(h.call(d7, Op::Write, 0, b"/def\0w"), err("EACCES"));
    // 35: an explicit entry overrides the default.
    assert_eq!(h.call(d7, Op::Read, 0, &args(&["/ovr"])), err("EACCES"));
    assert_eq!(h.call(d8, Op::Read, 0, &args(&["/ovr"])), ok("v"));
    // 36: the first matching entry wins.
    assert_eq!(h.call(d7, Op::Read, 0, &args(&["/first"])), ok("v"));
    assert_eq!(h.call(d7, Op::Write, 0, b"/first\0w"), err("EACCES"));
}

#[test]
fn l37_missing_nodes_are_hidden_behind_eacces() {
    let mut h = Harness::default();
    let s = with_domain_home(&mut h, 7);
    let _ = s;
    with_domain_home(&mut h, 5);
    let g = h.domu(5);
    assert_eq!(h.call(g, Op::Read, 0, &args(&["/local/domain/7/x"])), err("EACCES"));
    assert_eq!(h.call(g, Op::Read, 0, &args(&["/local/domain/5/x"])), err("ENOENT"));
}

#[test]
fn l38_owner_changes_and_set_perms_rights() {
    let mut h = Harness::default();
    let s = h.socket();
    h.call(s, Op::Write, 0, b"/q\0").unwrap();
    h.call(s, Op::SetPerms, 0, &args(&["/q", "n5", "b6"])).unwrap();
    let (d5, d6) = (h.domu(5), h.domu(6));
    assert_eq!(h.call(d5, Op::SetPerms, 0, &args(&["/q", "n6"])), err("EPERM"));
    assert_eq!(h.call(d6, Op::SetPerms, 0, &args(&["/q", "n6"])), err("EACCES"));
    assert_eq!(h.call(d5, Op::SetPerms, 0, &args(&["/q", "r5", "b6"])), okk());
    assert_eq!(h.call(s, Op::GetPerms, 0, &args(&["/q"])), ok("r5\0b6\0"));
}

#[test]
fn l39_l40_write_keeps_owner_and_rm_needs_write_on_the_node_only() {
    let mut h = Harness::default();
    let s = h.socket();
    h.call(s, Op::Write, 0, b"/q/x\0old").unwrap();
    h.call(s, Op::SetPerms, 0, &args(&["/q", "r0"])).unwrap();
    h.call(s, Op::SetPerms, 0, &args(&["/q/x", "n0", "b5"])).unwrap();
    let d5 = h.domu(5);
    assert_eq!(h.call(d5, Op::Write, 0, b"/q/x\0new"), okk());
    assert_eq!(h.call(s, Op::GetPerms, 0, &args(&["/q/x"])), ok("n0\0b5\0"));
    assert_eq!(h.call(d5, Op::Rm, 0, &args(&["/q/x"])), okk());
    assert_eq!(h.call(s, Op::Read, 0, &args(&["/q/x"])), err("ENOENT"));
}

#[test]
fn l41_set_target_lets_a_stub_act_for_its_domain() {
    let mut h = Harness::default();
    let s = h.socket();
    for d in ["5", "6"] {
        assert_eq!(h.call(s, Op::Introduce, 0, &args(&[d, "0", "1"])), okk());
    }
    assert_eq!(h.call(s, Op::SetTarget, 0, &args(&["6", "5"])), okk());
    h.call(s, Op::Write, 0, b"/t5\0v").unwrap();
    h.call(s, Op::SetPerms, 0, &args(&["/t5", "n5"])).unwrap();
    h.call(s, Op::Write, 0, b"/acl\0v").unwrap();
    h.call(s, Op::SetPerms, 0, &args(&["/acl", "n0", "b5"])).unwrap();
    // The stub's connection is the one INTRODUCE made for domain 6.
    let stub = h.core.domain(engine::DomId(6)).and_then(|d| d.conn).expect("introduced");
    assert_eq!(h.call(stub, Op::Read, 0, &args(&["/t5"])), ok("v"));
    assert_eq!(h.call(stub, Op::Write, 0, b"/t5\0w"), okk());
    assert_eq!(h.call(stub, Op::Write, 0, b"/acl\0w"), okk());
    assert_eq!(h.call(stub, Op::Introduce, 0, &args(&["9", "0", "1"])), err("EACCES"));
}

#[test]
fn l42_privileged_operations_refused_to_guests() {
    let mut h = Harness::default();
    let g = h.domu(5);
    for (op, payload) in [
        (Op::Introduce, args(&["9", "0", "1"])),
        (Op::Release, args(&["9"])),
        (Op::Resume, args(&["9"])),
        (Op::SetTarget, args(&["9", "5"])),
        (Op::IsDomainIntroduced, args(&["9"])),
        (Op::Control, args(&["help"])),
        (Op::SetFeature, args(&["9", "0"])),
        (Op::GetQuota, Vec::new()),
        (Op::SetQuota, args(&["nodes", "5"])),
        (Op::GetFeature, args(&["9"])),
    ] {
        assert_eq!(h.call(g, op, 0, &payload), err("EACCES"), "{op}");
    }
    assert_eq!(h.call(g, Op::GetFeature, 0, b""), ok("14\0"));
}

#[test]
fn l43_release_removes_owned_nodes_and_acl_entries() {
    let mut h = Harness::default();
    let s = h.socket();
    assert_eq!(h.call(s, Op::Introduce, 0, &args(&["5", "0", "1"])), okk());
    h.call(s, Op::Write, 0, b"/own5/sub\0v").unwrap();
    h.call(s, Op::SetPerms, 0, &args(&["/own5", "n5"])).unwrap();
    h.call(s, Op::Write, 0, b"/shared\0v").unwrap();
    h.call(s, Op::SetPerms, 0, &args(&["/shared", "n0", "r5", "b6"])).unwrap();
    h.call(s, Op::Watch, 0, &args(&["/own5/sub", "sub"])).unwrap();
    h.call(s, Op::Watch, 0, &args(&["@releaseDomain", "rel"])).unwrap();
    h.events(s);
    assert_eq!(h.call(s, Op::Release, 0, &args(&["5"])), okk());
    assert_eq!(h.call(s, Op::Read, 0, &args(&["/own5"])), err("ENOENT"));
    assert_eq!(h.call(s, Op::GetPerms, 0, &args(&["/shared"])), ok("n0\0b6\0"));
    assert_eq!(h.events(s), [ev("/own5/sub", "sub"), ev("@releaseDomain", "rel")]);
    assert_eq!(h.call(s, Op::IsDomainIntroduced, 0, &args(&["5"])), ok("F\0"));
}

#[test]
fn l49_relative_watch_reports_relative_paths() {
    let mut h = Harness::default();
    let s = with_domain_home(&mut h, 5);
    h.call(s, Op::SetPerms, 0, &args(&["/local/domain/5", "n5"])).unwrap();
    let g = h.domu(5);
    assert_eq!(h.call(g, Op::Watch, 0, &args(&["foo", "rel"])), okk());
    assert_eq!(h.call(g, Op::Watch, 0, &args(&["/local/domain/5/foo", "abs"])), okk());
    assert_eq!(h.events(g), [ev("foo", "rel"), ev("/local/domain/5/foo", "abs")]);
    h.call(g, Op::Write, 0, b"foo/bar\0x").unwrap();
    assert_eq!(h.events(g), [ev("foo/bar", "rel"), ev("/local/domain/5/foo/bar", "abs")]);
}

#[test]
fn l55_events_are_filtered_by_read_access() {
    let mut h = Harness::default();
    let s = h.socket();
    h.call(s, Op::Write, 0, b"/secret/x\0").unwrap();
    h.call(s, Op::SetPerms, 0, &args(&["/secret", "n0"])).unwrap();
    h.call(s, Op::SetPerms, 0, &args(&["/secret/x", "n0"])).unwrap();
    h.call(s, Op::Write, 0, b"/open/x\0").unwrap();
    h.call(s, Op::SetPerms, 0, &args(&["/open", "r0"])).unwrap();
    let g = h.domu(5);
    h.call(g, Op::Watch, 0, &args(&["/secret/x", "s"])).unwrap();
    h.call(g, Op::Watch, 0, &args(&["/open/x", "o"])).unwrap();
    h.events(g);
    h.call(s, Op::Write, 0, b"/secret/x\0v").unwrap();
    h.call(s, Op::Write, 0, b"/open/x\0v").unwrap();
    // /open/x itself is n0, but its parent /open is readable.
    assert_eq!(h.events(g), [ev("/open/x", "o")]);
}

#[test]
fn l58_l59_special_watches() {
    let mut h = Harness::default();
    let s = h.socket();
    let g = h.domu(9);
    h.call(s, Op::Watch, 0, &args(&["@introduceDomain", "intro"])).unwrap();
    h.call(s, Op::Watch, 0, &args(&["@releaseDomain", "rel"])).unwrap();
    h.call(s, Op::Watch, 0, &args(&["@releaseDomain", "rel1", "1"])).unwrap();
    h.call(g, Op::Watch, 0, &args(&["@releaseDomain", "guest"])).unwrap();
    h.call(g, Op::Watch, 0, &args(&["@introduceDomain", "guest-intro"])).unwrap();
    h.events(s);
    h.events(g);
    assert_eq!(h.call(s, Op::Introduce, 0, &args(&["5", "0", "1"])), okk());
    assert_eq!(h.events(s), [ev("@introduceDomain", "intro")]);
    assert_eq!(h.call(s, Op::Release, 0, &args(&["5"])), okk());
    assert_eq!(h.events(s), [ev("@releaseDomain", "rel"), ev("@releaseDomain/5", "rel1")]);
    // The guest sees @releaseDomain (DOMID_ANY read) but not @introduceDomain.
    assert_eq!(h.events(g), [ev("@releaseDomain", "guest")]);
}

#[test]
fn l77_to_l80_guest_quotas() {
    let mut h = Harness::default();
    let s = with_domain_home(&mut h, 5);
    h.call(s, Op::SetPerms, 0, &args(&["/local/domain/5", "n5"])).unwrap();
    let g = h.domu(5);
    // 77: node-permissions (5 entries refused at HEAD, 3 fine).
    let home = "/local/domain/5";
    assert_eq!(h.call(g, Op::SetPerms, 0, &args(&[home, "n5", "r1", "r2", "r3", "r4", "r6"])), err("ENOSPC"));
    assert_eq!(h.call(g, Op::SetPerms, 0, &args(&[home, "n5", "r1", "r2", "r3", "r4"])), err("ENOSPC"));
    assert_eq!(h.call(g, Op::SetPerms, 0, &args(&[home, "n5", "r1", "r2"])), okk());
    // 78: node-size.
    let big = vec![b'x'; 2100];
    let mut payload = b"big\0".to_vec();
    payload.extend_from_slice(&big);
    assert_eq!(h.call(g, Op::Write, 0, &payload), err("ENOSPC"));
    assert_eq!(h.call(s, Op::Write, 0, &[b"/local/domain/5/big\0".as_slice(), &big].concat()), okk());
    // The same checks on an existing node (written on the lookup that checks it).
    assert_eq!(h.call(g, Op::Write, 0, &payload), err("ENOSPC"));
    assert_eq!(h.call(g, Op::Write, 0, b"big\0small"), okk());
    assert_eq!(h.call(g, Op::Read, 0, b"big\0"), Ok(b"small".to_vec()));
    assert_eq!(h.call(s, Op::Write, 0, b"/local/domain/5/ro\0x"), okk());
    assert_eq!(h.call(s, Op::SetPerms, 0, &args(&["/local/domain/5/ro", "n0"])), okk());
    assert_eq!(h.call(g, Op::Write, 0, b"ro\0y"), err("EACCES"));
    assert_eq!(h.call(s, Op::Read, 0, b"/local/domain/5/ro\0"), Ok(b"x".to_vec()));
    // 79: 127 watches, then ENOSPC.
    for i in 0..127 {
        assert_eq!(h.call(g, Op::Watch, 0, &args(&["w", &format!("t{i}")])), okk(), "watch {i}");
    }
    assert_eq!(h.call(g, Op::Watch, 0, &args(&["w", "one-too-many"])), err("ENOSPC"));
    // 80: 9 open transactions, then ENOSPC.
    for i in 0..9 {
        assert!(h.call(g, Op::TransactionStart, 0, b"\0").is_ok(), "transaction {i}");
    }
    assert_eq!(h.call(g, Op::TransactionStart, 0, b"\0"), err("ENOSPC"));
}

#[test]
fn guest_node_quota_counts_owned_nodes() {
    let mut h = Harness::default();
    let s = with_domain_home(&mut h, 5);
    h.call(s, Op::SetPerms, 0, &args(&["/local/domain/5", "n5"])).unwrap();
    h.call(s, Op::SetQuota, 0, &args(&["5", "nodes", "4"])).unwrap();
    let g = h.domu(5);
    // Domain 5 owns its home already: 1 node.
    assert_eq!(h.call(g, Op::Write, 0, b"a\0"), okk());
    assert_eq!(h.call(g, Op::Write, 0, b"b\0"), okk());
    assert_eq!(h.call(g, Op::Write, 0, b"c\0"), err("ENOSPC"));
    // In a transaction the check happens at commit.
    h.call(s, Op::SetQuota, 0, &args(&["5", "nodes", "6"])).unwrap();
    let tx = h.start_tx(g);
    assert_eq!(h.call(g, Op::Write, tx, b"t1\0"), okk());
    h.call(s, Op::Write, 0, b"/local/domain/5/x\0").unwrap();
    h.call(s, Op::SetPerms, 0, &args(&["/local/domain/5/x", "n5"])).unwrap();
    h.call(s, Op::Write, 0, b"/local/domain/5/y\0").unwrap();
    h.call(s, Op::SetPerms, 0, &args(&["/local/domain/5/y", "n5"])).unwrap();
    assert_eq!(h.call(g, Op::TransactionEnd, tx, b"T\0"), err("ENOSPC"));
}

#[test]
fn transaction_nodes_quota_dooms_the_transaction() {
    let mut h = Harness::default();
    let s = with_domain_home(&mut h, 5);
    h.call(s, Op::SetPerms, 0, &args(&["/local/domain/5", "n5"])).unwrap();
    h.call(s, Op::SetQuota, 0, &args(&["5", "transaction-nodes", "4"])).unwrap();
    let g = h.domu(5);
    let tx = h.start_tx(g);
    assert_eq!(h.call(g, Op::Write, tx, b"a\0"), okk());
    assert_eq!(h.call(g, Op::Write, tx, b"b\0"), okk());
    assert_eq!(h.call(g, Op::Write, tx, b"c\0"), err("ENOSPC"));
    assert_eq!(h.call(g, Op::TransactionEnd, tx, b"T\0"), err("ENOMEM"));
    assert_eq!(h.call(g, Op::Read, 0, &args(&["a"])), err("ENOENT"));
}

#[test]
fn coalescing_guest_transactions_under_one_parent() {
    // The bootstorm case the engine exists for: both commit, no EAGAIN.
    let mut h = Harness::default();
    let s = h.socket();
    h.call(s, Op::Mkdir, 0, &args(&["/local/domain"])).unwrap();
    let t1 = h.start_tx(s);
    let s2 = h.socket();
    let t2 = h.start_tx(s2);
    assert_eq!(h.call(s, Op::Write, t1, b"/local/domain/1/name\0a"), okk());
    assert_eq!(h.call(s2, Op::Write, t2, b"/local/domain/2/name\0b"), okk());
    assert_eq!(h.call(s, Op::TransactionEnd, t1, b"T\0"), okk());
    assert_eq!(h.call(s2, Op::TransactionEnd, t2, b"T\0"), okk());
    assert_eq!(h.call(s, Op::Directory, 0, &args(&["/local/domain"])), ok("1\x002\0"));
}

#[test]
fn malformed_input_never_panics_and_oversize_length_drops_only_that_connection() {
    let mut h = Harness::default();
    let bad = h.socket();
    let good = h.socket();
    let mut header = Vec::new();
    wire::encode(Op::Write, 1, 0, &[], &mut header);
    header[12..16].copy_from_slice(&4097u32.to_le_bytes());
    assert!(h.core.receive(bad, &header).is_err());
    h.core.disconnect(bad);
    assert_eq!(h.call(good, Op::Write, 0, b"/still\0here"), okk());
    for payload in [&b""[..], b"\0", b"\xff\xfe\0", b"/a\0\0", b"/a\x00b\0", b"//\0", b"/a b\0"] {
        // One-argument operations refuse every one of these.
        for op in [Op::Read, Op::Mkdir, Op::Rm, Op::Directory, Op::GetPerms] {
            assert_eq!(h.call(good, op, 0, payload), err("EINVAL"), "{op} {payload:?}");
        }
        // The others answer something (a WATCH with an empty token is valid).
        for op in [Op::Write, Op::SetPerms, Op::Watch, Op::Unwatch, Op::DirectoryPart, Op::Control] {
            let _ = h.call(good, op, 0, payload);
        }
    }
    assert_eq!(h.call(good, Op::Read, 0, &args(&["/still"])), ok("here"));
}

/// A refusal reported for the daemon's quota log: (domain, request, quota,
/// value, limit, count).
type Refusal = (u16, Option<Op>, &'static str, usize, u32, u32);

fn quota_events(h: &mut Harness) -> Vec<Refusal> {
    h.core
        .take_quota_events()
        .into_iter()
        .map(|e| (e.domid.0, e.op, e.hit.quota.name(), e.hit.value, e.hit.limit, e.count))
        .collect()
}

#[test]
fn refusals_by_quotas_are_reported_per_domain_and_quota() {
    let mut h = Harness::default();
    let s = with_domain_home(&mut h, 5);
    h.call(s, Op::SetPerms, 0, &args(&["/local/domain/5", "n5"])).expect("SET_PERMS");
    h.call(s, Op::SetQuota, 0, &args(&["watches", "3"])).expect("SET_QUOTA");
    h.call(s, Op::SetQuota, 0, &args(&["transactions", "2"])).expect("SET_QUOTA");
    let g = h.domu(5);
    assert_eq!(quota_events(&mut h), [], "nothing refused yet");
    for i in 0..2 {
        assert_eq!(h.call(g, Op::Watch, 0, &args(&["w", &format!("t{i}")])), okk());
    }
    // Refused three times: one report, with the count.
    for _ in 0..3 {
        assert_eq!(h.call(g, Op::Watch, 0, &args(&["w", "more"])), err("ENOSPC"));
    }
    assert!(h.call(g, Op::TransactionStart, 0, b"\0").is_ok());
    assert_eq!(h.call(g, Op::TransactionStart, 0, b"\0"), err("ENOSPC"));
    let big = [b"big\0".as_slice(), &[b'x'; 2100]].concat();
    assert_eq!(h.call(g, Op::Write, 0, &big), err("ENOSPC"));
    let long = format!("{}\0v", "a".repeat(2048));
    assert_eq!(h.call(g, Op::Write, 0, long.as_bytes()), err("EINVAL"));
    assert_eq!(
        quota_events(&mut h),
        [
            // In the quotas' order, each with the value the request would
            // have reached and the limit.
            (5, Some(Op::Watch), "watches", 3, 3, 3),
            (5, Some(Op::TransactionStart), "transactions", 2, 2, 1),
            (5, Some(Op::Write), "path-max", 2048, 2048, 1),
            (5, Some(Op::Write), "node-size", 2124, 2048, 1),
        ]
    );
    assert_eq!(quota_events(&mut h), [], "taken");
    // dom0 is privileged: no quota, nothing reported.
    for i in 0..4 {
        assert_eq!(h.call(s, Op::Watch, 0, &args(&["/w", &format!("t{i}")])), okk());
    }
    assert_eq!(quota_events(&mut h), []);
}

#[test]
fn control_quota_shows_current_use_next_to_the_limits() {
    let mut h = Harness::default();
    let s = with_domain_home(&mut h, 5);
    h.call(s, Op::SetPerms, 0, &args(&["/local/domain/5", "n5"])).expect("SET_PERMS");
    let g = h.domu(5);
    h.call(s, Op::SetQuota, 0, &args(&["5", "watches", "50"])).expect("SET_QUOTA");
    assert_eq!(h.call(g, Op::Write, 0, b"a\0"), okk());
    assert_eq!(h.call(g, Op::Watch, 0, &args(&["a", "t"])), okk());
    assert!(h.call(g, Op::TransactionStart, 0, b"\0").is_ok());
    let text = |r: support::Reply| String::from_utf8(r.expect("CONTROL")).expect("text");
    // The domain's own limits beside its use.
    let domain = text(h.call(s, Op::Control, 0, &args(&["quota", "5"])));
    assert_eq!(
        domain,
        "Domain 5:\n\
         nodes           :        2 of     1000\n\
         watches         :        1 of       50\n\
         transactions    :        1 of       10\n\
         outstanding     :        0 of       20\n\
         memory          :       82 of  2621440\n\0"
    );
    // The global table names the highest use of each held quota.
    let table = text(h.call(s, Op::Control, 0, &args(&["quota"])));
    assert!(table.starts_with("Quota settings:\n"), "{table}");
    assert!(table.contains("nodes            :     1000 Nodes per domain; highest use 2 (domain 5)\n"), "{table}");
    assert!(table.contains("watches          :      128 Watches per domain; highest use 1 (domain 5)\n"), "{table}");
    assert!(table.contains("node-size        :     2048 Max. size of a node\n"), "{table}");
    let max = text(h.call(s, Op::Control, 0, &args(&["quota", "max"])));
    assert!(max.contains("nodes           :        2 of     1000\n"), "{max}");
}

/// After a crash restart a guest's ring is taken up again, but the daemon
/// lost its transactions: a request in one of them is served in a fresh
/// transaction, whose commit answers EAGAIN (the guest starts it again, as
/// after a conflict) instead of ENOENT (which a kernel takes as failure).
#[test]
fn transactions_lost_in_a_crash_end_with_eagain() {
    let mut h = Harness::default();
    let s = with_domain_home(&mut h, 5);
    h.call(s, Op::SetPerms, 0, &args(&["/local/domain/5", "n5"])).unwrap();
    let g = h.domu(5);
    assert_eq!(h.call(g, Op::Write, 7, b"a\0x"), err("ENOENT"), "not restored: C's answer");
    h.core.adopt_lost_transactions(g);
    assert_eq!(h.call(g, Op::Write, 7, b"a\0x"), okk());
    assert_eq!(h.call(g, Op::Read, 7, b"a\0"), Ok(b"x".to_vec()));
    assert_eq!(h.call(g, Op::TransactionEnd, 7, b"T\0"), err("EAGAIN"));
    assert_eq!(h.call(g, Op::Read, 0, b"a\0"), err("ENOENT"), "nothing of it committed");
    // Aborting a lost transaction is fine; a new one commits.
    assert_eq!(h.call(g, Op::TransactionEnd, 9, b"F\0"), okk());
    let tx = h.start_tx(g);
    assert_eq!(h.call(g, Op::Write, tx, b"a\0y"), okk());
    assert_eq!(h.call(g, Op::TransactionEnd, tx, b"T\0"), okk());
    assert_eq!(h.call(g, Op::Read, 0, b"a\0"), Ok(b"y".to_vec()));
}
