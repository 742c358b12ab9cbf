//! Transactions against a reference model.
//!
//! Guards against lost updates and write skew: random interleavings of
//! concurrent transactions run on the engine, and every transaction that
//! commits must have received exactly the replies that running its requests
//! serially, in commit order, on a plain ordered map would give (a read-only
//! transaction at its fork point instead). The final tree, and the changes
//! each commit reports (what watch events are made of: paths, creation,
//! permissions), must equal the serial ones; the engine's node counts are
//! checked against its nodes. The same check runs on a tree shaped like a
//! host whose backend directories do not exist yet, where concurrent
//! transactions create the same missing intermediate levels. Two more
//! properties check that transactions which must coalesce (creations of
//! different children of one parent, work in disjoint subtrees, a
//! bootstorm on a fresh tree) never conflict.

use std::collections::BTreeMap;

use engine::{Change, CommitError, DomId, Path, Perms, Snapshot, Store, Transaction};
use proptest::prelude::*;

const PATHS: &[&str] = &["/a", "/a/b", "/a/c", "/a/b/d", "/b", "/b/x", "/b/y", "/c"];
/// A host's tree before its first domain: `/l/0` (dom0's home) only, the
/// backend directories missing; keys of two domains' devices below them,
/// and of their homes.
const FRESH: &[&str] = &[
    "/l",
    "/l/0",
    "/l/0/be",
    "/l/0/be/vif",
    "/l/0/be/vbd",
    "/l/0/be/vif/1/k",
    "/l/0/be/vbd/1/k",
    "/l/0/be/vif/2/k",
    "/l/0/be/vbd/2/k",
    "/l/1",
    "/l/1/k",
    "/l/2/k",
];
const VALUES: &[&[u8]] = &[b"", b"1", b"2", b"\0z"];

/// A request; paths are indexes into a table (`PATHS`, `FRESH`, ...).
#[derive(Clone, Debug)]
enum Op {
    Read(usize),
    Write(usize, usize, Option<u16>),
    Mkdir(usize, Option<u16>),
    Rm(usize),
    Dir(usize),
    GetPerms(usize),
    SetPerms(usize, u16),
    Generation(usize),
}

#[derive(Clone, Debug, PartialEq, Eq)]
enum Reply {
    Value(Option<Vec<u8>>),
    Done,
    Flag(bool),
    Names(Option<Vec<String>>),
    Perms(Option<Vec<u8>>),
    /// Generations differ between engine and model; only presence compares.
    Generation(bool),
}

/// A change as the model reports it (permissions in their wire form).
#[derive(Clone, Debug, PartialEq, Eq)]
enum Event {
    Written(String, bool),
    Removed(String, Vec<u8>, Vec<(String, Vec<u8>)>),
    PermsSet(String, Vec<u8>, Vec<u8>),
}

fn path(t: &[&str], i: usize) -> Path {
    Path::new(t[i]).expect("valid")
}

/// A request on the paths of a table of `n`.
fn op(n: usize) -> impl Strategy<Value = Op> {
    let i = 0..n;
    let creator = prop_oneof![Just(None), Just(Some(5u16))];
    prop_oneof![
        3 => i.clone().prop_map(Op::Read),
        3 => (i.clone(), 0..VALUES.len(), creator.clone()).prop_map(|(p, v, c)| Op::Write(p, v, c)),
        1 => (i.clone(), creator).prop_map(|(p, c)| Op::Mkdir(p, c)),
        1 => i.clone().prop_map(Op::Rm),
        2 => i.clone().prop_map(Op::Dir),
        1 => i.clone().prop_map(Op::GetPerms),
        1 => (i.clone(), 0..3u16).prop_map(|(p, d)| Op::SetPerms(p, d)),
        1 => i.prop_map(Op::Generation),
    ]
}

// ---- the engine side ----

fn run_engine(tx: &mut Transaction, t: &[&str], op: &Op) -> Reply {
    match *op {
        Op::Read(p) => Reply::Value(tx.value(&path(t, p)).map(|v| v.as_bytes().to_vec())),
        Op::Write(p, v, c) => {
            tx.write(&path(t, p), VALUES[v], c.map(DomId)).expect("write");
            Reply::Done
        }
        Op::Mkdir(p, c) => Reply::Flag(tx.mkdir(&path(t, p), c.map(DomId)).expect("mkdir").is_some()),
        Op::Rm(p) => Reply::Flag(tx.remove(&path(t, p)).expect("rm").is_some()),
        Op::Dir(p) => Reply::Names(tx.children(&path(t, p)).map(|c| c.iter().map(|n| n.to_string()).collect())),
        Op::GetPerms(p) => Reply::Perms(tx.perms(&path(t, p)).map(|x| x.to_wire())),
        Op::SetPerms(p, d) => Reply::Flag(tx.set_perms(&path(t, p), Perms::owned_by(DomId(d))).is_ok()),
        Op::Generation(p) => Reply::Generation(tx.generation(&path(t, p)).is_some()),
    }
}

fn event_of(c: &Change) -> Event {
    match c {
        Change::Written { path, created } => Event::Written(path.as_str().into(), *created),
        Change::Removed { path, perms, descendants } => Event::Removed(
            path.as_str().into(),
            perms.to_wire(),
            descendants.iter().map(|(p, perms)| (p.as_str().to_string(), perms.to_wire())).collect(),
        ),
        Change::PermsSet { path, old, new } => Event::PermsSet(path.as_str().into(), old.to_wire(), new.to_wire()),
    }
}

// ---- the reference model: a plain ordered map, executed serially ----

#[derive(Clone, Debug, PartialEq, Eq)]
struct MNode {
    value: Vec<u8>,
    perms: Vec<u8>,
    children: Vec<String>,
}

type Model = BTreeMap<String, MNode>;

fn model_new() -> Model {
    let mut m = Model::new();
    m.insert("/".into(), MNode { value: vec![], perms: b"n0\0".to_vec(), children: vec![] });
    m
}

fn parent_of(p: &str) -> (String, String) {
    let i = p.rfind('/').expect("absolute");
    let parent = if i == 0 { "/".to_string() } else { p[..i].to_string() };
    (parent, p[i + 1..].to_string())
}

fn model_create(m: &mut Model, p: &str, value: &[u8], creator: Option<u16>) {
    let (parent, name) = parent_of(p);
    if !m.contains_key(&parent) {
        model_create(m, &parent, b"", creator);
    }
    let parent_node = m.get_mut(&parent).expect("parent");
    parent_node.children.push(name);
    let mut perms = parent_node.perms.clone();
    if let Some(c) = creator {
        // Replace the owner's domid, keep its letter and the rest.
        let end = perms.iter().position(|&b| b == 0).expect("NUL");
        let mut owner = vec![perms[0]];
        owner.extend_from_slice(c.to_string().as_bytes());
        perms.splice(0..end, owner);
    }
    m.insert(p.to_string(), MNode { value: value.to_vec(), perms, children: vec![] });
}

/// Removes `p`'s subtree; `removed` gets its nodes, children before
/// parents and in child order, each with its permissions.
fn model_remove(m: &mut Model, p: &str, removed: &mut Vec<(String, Vec<u8>)>) {
    if let Some(node) = m.remove(p) {
        for c in node.children {
            model_remove(m, &format!("{p}/{c}"), removed);
        }
        removed.push((p.to_string(), node.perms));
    }
}

/// Runs `op` serially; the change it made, if any, goes to `events`.
fn run_model(m: &mut Model, t: &[&str], op: &Op, events: &mut Vec<Event>) -> Reply {
    match *op {
        Op::Read(p) => Reply::Value(m.get(t[p]).map(|n| n.value.clone())),
        Op::Write(p, v, c) => {
            let created = match m.get_mut(t[p]) {
                Some(n) => {
                    n.value = VALUES[v].to_vec();
                    false
                }
                None => {
                    model_create(m, t[p], VALUES[v], c);
                    true
                }
            };
            events.push(Event::Written(t[p].into(), created));
            Reply::Done
        }
        Op::Mkdir(p, c) => {
            let missing = !m.contains_key(t[p]);
            if missing {
                model_create(m, t[p], b"", c);
                events.push(Event::Written(t[p].into(), true));
            }
            Reply::Flag(missing)
        }
        Op::Rm(p) => {
            let existed = m.contains_key(t[p]);
            if existed {
                let mut removed = Vec::new();
                model_remove(m, t[p], &mut removed);
                let (_, perms) = removed.pop().expect("the node itself comes last");
                events.push(Event::Removed(t[p].into(), perms, removed));
                let (parent, name) = parent_of(t[p]);
                m.get_mut(&parent).expect("parent").children.retain(|c| *c != name);
            }
            Reply::Flag(existed)
        }
        Op::Dir(p) => Reply::Names(m.get(t[p]).map(|n| n.children.clone())),
        Op::GetPerms(p) => Reply::Perms(m.get(t[p]).map(|n| n.perms.clone())),
        Op::SetPerms(p, d) => Reply::Flag(match m.get_mut(t[p]) {
            Some(n) => {
                let new = format!("n{d}\0").into_bytes();
                events.push(Event::PermsSet(t[p].into(), std::mem::replace(&mut n.perms, new.clone()), new));
                true
            }
            None => false,
        }),
        Op::Generation(p) => Reply::Generation(m.contains_key(t[p])),
    }
}

fn model_of(s: &Snapshot) -> Model {
    s.iter_tree()
        .map(|(p, n)| {
            let node = MNode {
                value: n.value().as_bytes().to_vec(),
                perms: n.perms().to_wire(),
                children: n.children().iter().map(|c| c.to_string()).collect(),
            };
            (p.as_str().to_string(), node)
        })
        .collect()
}

// ---- the schedule ----

#[derive(Clone, Debug)]
struct Script {
    ops: Vec<Op>,
    commit: bool,
}

struct Running {
    tx: Option<Transaction>,
    next: usize,
    replies: Vec<Reply>,
    /// Commits that happened before this transaction forked.
    forked_after: usize,
}

/// A committed transaction.
struct Committed {
    script: usize,
    /// Commits that happened before it forked.
    forked_after: usize,
    replies: Vec<Reply>,
    /// It mutated nothing.
    read_only: bool,
    /// The changes its commit reported.
    events: Vec<Event>,
}

/// Runs the scripts interleaved as `choices` says; returns the committed
/// transactions in commit order and the number of conflicts.
fn execute(store: &Store, t: &[&str], scripts: &[Script], choices: &[usize]) -> (Vec<Committed>, usize) {
    let mut running: Vec<Running> =
        scripts.iter().map(|_| Running { tx: None, next: 0, replies: vec![], forked_after: 0 }).collect();
    let mut done = vec![false; scripts.len()];
    let mut committed = Vec::new();
    let mut conflicts = 0;
    for &c in choices.iter().cycle() {
        let live: Vec<usize> = (0..scripts.len()).filter(|&i| !done[i]).collect();
        if live.is_empty() {
            break;
        }
        let i = live[c % live.len()];
        let r = &mut running[i];
        match r.tx.as_mut() {
            None => {
                r.tx = Some(store.begin());
                r.forked_after = committed.len();
            }
            Some(tx) if r.next < scripts[i].ops.len() => {
                r.replies.push(run_engine(tx, t, &scripts[i].ops[r.next]));
                r.next += 1;
            }
            Some(_) => {
                done[i] = true;
                let tx = r.tx.take().expect("open");
                if !scripts[i].commit {
                    continue;
                }
                let read_only = tx.is_read_only();
                match store.commit(tx, |_| Ok::<_, ()>(())) {
                    Ok(c) => committed.push(Committed {
                        script: i,
                        forked_after: r.forked_after,
                        replies: std::mem::take(&mut r.replies),
                        read_only,
                        events: c.changes.iter().map(event_of).collect(),
                    }),
                    Err(CommitError::Conflict { .. }) => conflicts += 1,
                    Err(e) => panic!("unexpected commit error {e:?}"),
                }
            }
        }
    }
    (committed, conflicts)
}

fn script(n: usize) -> impl Strategy<Value = Script> {
    (prop::collection::vec(op(n), 0..6), prop::bool::weighted(0.85)).prop_map(|(ops, commit)| Script { ops, commit })
}

/// Runs `setup` serially, then `scripts` as concurrent transactions, and
/// checks every committed one against serial execution in commit order:
/// its replies, the changes its commit reported, and the tree after it.
/// Returns the number of conflicts.
fn check_serializable(t: &[&str], setup: &[Op], scripts: &[Script], choices: &[usize]) -> Result<usize, TestCaseError> {
    let store = Store::new(Snapshot::new(Perms::owned_by(DomId(0))));
    let mut model = model_new();
    for op in setup {
        store.update(|tx| Ok::<_, ()>(run_engine(tx, t, op))).expect("setup");
        run_model(&mut model, t, op, &mut Vec::new());
    }
    prop_assert_eq!(model_of(&store.snapshot()), model.clone());

    let (committed, conflicts) = execute(&store, t, scripts, choices);
    // Serial replay in commit order; the state after k commits is history[k].
    let mut history = vec![model.clone()];
    for c in &committed {
        let ops = &scripts[c.script].ops;
        // A transaction that mutated nothing is serialized at its fork point.
        let mut state = if c.read_only { history[c.forked_after].clone() } else { model.clone() };
        let mut events = Vec::new();
        let expected: Vec<Reply> = ops.iter().map(|o| run_model(&mut state, t, o, &mut events)).collect();
        prop_assert_eq!(
            &c.replies,
            &expected,
            "transaction {} (forked after {} commits) got other replies than serial execution",
            c.script,
            c.forked_after
        );
        if !c.read_only {
            prop_assert_eq!(&c.events, &events, "transaction {}: other changes than serial execution", c.script);
            model = state;
        }
        history.push(model.clone());
    }
    let snap = store.snapshot();
    prop_assert_eq!(model_of(&snap), model);
    snap.check_consistent().map_err(|e| TestCaseError::fail(e.to_string()))?;
    // The buffered whole-tree walk visits exactly what the plain one does.
    let mut walked = Vec::new();
    snap.for_each_in_tree(|p, n| walked.push((Path::new(p).expect("stored path"), n.clone())));
    let plain: Vec<_> = snap.iter_tree().map(|(p, n)| (p, n.clone())).collect();
    prop_assert_eq!(walked, plain);
    Ok(conflicts)
}

/// The requests of a toolstack creating domain `d` (1-based) on a host
/// whose tree is `/l/0` (dom0's home) and `/config`: as a table of paths
/// and a script over it. It reads the configuration, makes its home with
/// its own permissions, writes each key of `keys` in its home and below
/// both backend directories (so from its second key on, each backend
/// creation reads the permissions of the levels it created), and reads
/// the permissions and value of the shared backend level.
fn domain_script(d: usize, keys: &[usize]) -> (Vec<String>, Vec<Op>) {
    let mut t: Vec<String> = vec!["/config".into(), format!("/l/{d}"), "/l/0/be".into()];
    let mut ops = vec![Op::Read(0), Op::Mkdir(1, None), Op::SetPerms(1, d as u16)];
    for &k in keys {
        for p in [format!("/l/{d}/device/vif/{k}"), format!("/l/0/be/vif/{d}/{k}"), format!("/l/0/be/vbd/{d}/{k}")] {
            t.push(p);
            ops.push(Op::Write(t.len() - 1, 1, None));
        }
    }
    ops.extend([Op::GetPerms(2), Op::Read(2)]);
    (t, ops)
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 3000, ..ProptestConfig::default() })]

    #[test]
    fn committed_transactions_are_serializable_in_commit_order(
        setup in prop::collection::vec(op(PATHS.len()), 0..8),
        scripts in prop::collection::vec(script(PATHS.len()), 1..5),
        choices in prop::collection::vec(0usize..64, 1..64),
    ) {
        check_serializable(PATHS, &setup, &scripts, &choices)?;
    }

    /// Random requests on a host's tree without backend directories: many
    /// transactions create the same missing levels, some read them, list
    /// them, change their permissions, remove them, or create them as
    /// another domain (other permissions).
    #[test]
    fn transactions_on_a_fresh_backend_tree_are_serializable_in_commit_order(
        setup in prop::collection::vec(op(FRESH.len()), 0..3),
        scripts in prop::collection::vec(script(FRESH.len()), 2..5),
        choices in prop::collection::vec(0usize..64, 1..64),
    ) {
        // `/l/0` exists, then whatever the random setup adds.
        let setup: Vec<Op> = std::iter::once(Op::Mkdir(1, None)).chain(setup).collect();
        check_serializable(FRESH, &setup, &scripts, &choices)?;
    }

    /// A bootstorm on a fresh tree: domains created concurrently, each
    /// creating the missing backend levels, never conflict, and the result
    /// (tree, counts, every commit's changes) is that of serial execution.
    #[test]
    fn a_bootstorm_on_a_fresh_backend_tree_never_conflicts(
        keys in prop::collection::vec(prop::collection::vec(0usize..3, 1..4), 2..9),
        choices in prop::collection::vec(0usize..64, 1..64),
    ) {
        // One table for all: each domain's script, its indexes shifted.
        let mut table: Vec<String> = vec!["/l/0".into()];
        let mut scripts = Vec::new();
        for (d, keys) in (1..).zip(&keys) {
            let (t, ops) = domain_script(d, keys);
            let base = table.len();
            table.extend(t);
            let shift = |i: usize| i + base;
            let ops = ops
                .into_iter()
                .map(|o| match o {
                    Op::Read(i) => Op::Read(shift(i)),
                    Op::Write(i, v, c) => Op::Write(shift(i), v, c),
                    Op::Mkdir(i, c) => Op::Mkdir(shift(i), c),
                    Op::SetPerms(i, o) => Op::SetPerms(shift(i), o),
                    Op::GetPerms(i) => Op::GetPerms(shift(i)),
                    other => other,
                })
                .collect();
            scripts.push(Script { ops, commit: true });
        }
        let t: Vec<&str> = table.iter().map(String::as_str).collect();
        // `/l/0` and the shared configuration (the first path of the
        // first domain's table).
        let setup = [Op::Mkdir(0, None), Op::Write(1, 1, None)];
        let conflicts = check_serializable(&t, &setup, &scripts, &choices)?;
        prop_assert_eq!(conflicts, 0);
    }

    #[test]
    fn creations_under_one_parent_and_disjoint_subtrees_never_conflict(
        creators in prop::collection::vec((0usize..3, prop::collection::vec(0usize..4, 1..4)), 2..12),
        choices in prop::collection::vec(0usize..64, 1..64),
    ) {
        // Each transaction is a domain: it reads a shared node nobody writes,
        // creates /local/domain/<d>/... and backend entries under shared
        // parents, and works in its own subtree.
        let store = Store::new(Snapshot::new(Perms::owned_by(DomId(0))));
        let shared = ["/local/domain/0/backend/vif", "/local/domain/0/backend/vbd", "/config"];
        for s in shared {
            store.update(|tx| tx.write(&Path::new(s).expect("p"), b"cfg", None)).expect("setup");
        }
        let mut txs: Vec<Option<Transaction>> = creators.iter().map(|_| Some(store.begin())).collect();
        let mut conflicts = 0;
        let mut choice = choices.iter().cycle();
        let mut pending: Vec<usize> = (0..creators.len()).collect();
        let mut steps: Vec<usize> = vec![0; creators.len()];
        while !pending.is_empty() {
            let k = choice.next().copied().unwrap_or(0) % pending.len();
            let d = pending[k];
            let (kind, ref keys) = creators[d];
            let tx = txs[d].as_mut().expect("open until committed");
            let home = format!("/local/domain/{}", d + 1);
            match steps[d] {
                0 => { prop_assert_eq!(tx.value(&Path::new("/config").expect("p")).map(|v| v.as_bytes().to_vec()), Some(b"cfg".to_vec())); }
                s if s <= keys.len() => {
                    let key = keys[s - 1];
                    let p = match kind {
                        0 => format!("{home}/device/vif/{key}"),
                        1 => format!("{}/{}/{key}", shared[key % 2], d + 1),
                        _ => format!("{home}/data/k{key}"),
                    };
                    let p = Path::new(&p).expect("p");
                    tx.write(&p, b"v", None).expect("write");
                    prop_assert_eq!(tx.value(&p).map(|v| v.as_bytes().to_vec()), Some(b"v".to_vec()));
                }
                _ => {
                    let tx = txs[d].take().expect("open");
                    if store.commit(tx, |_| Ok::<_, ()>(())).is_err() {
                        conflicts += 1;
                    }
                    pending.remove(k);
                }
            }
            steps[d] += 1;
        }
        prop_assert_eq!(conflicts, 0);
        let snap = store.snapshot();
        snap.check_consistent().map_err(|e| TestCaseError::fail(e.to_string()))?;
        for (d, creator) in creators.iter().enumerate() {
            let home = format!("/local/domain/{}", d + 1);
            prop_assert!(snap.contains(&home) || creator.0 == 1, "{} missing", home);
        }
    }
}
