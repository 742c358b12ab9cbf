//! Transactions against a reference model.
//!
//! Guards against lost updates and write skew: random interleavings of
//! concurrent transactions run on the engine, and every transaction that
//! commits must have received exactly the replies that running its requests
//! serially, in commit order, on a plain ordered map would give (a read-only
//! transaction at its fork point instead). The final tree must equal the
//! serial one. A second property checks that transactions which must
//! coalesce (creations of different children of one parent, work in
//! disjoint subtrees) never conflict.

use std::collections::BTreeMap;

use engine::{CommitError, DomId, Path, Perms, Snapshot, Store, Transaction};
use proptest::prelude::*;

const PATHS: &[&str] = &["/a", "/a/b", "/a/c", "/a/b/d", "/b", "/b/x", "/b/y", "/c"];
const VALUES: &[&[u8]] = &[b"", b"1", b"2", b"\0z"];

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

fn path(i: usize) -> Path {
    Path::new(PATHS[i]).expect("valid")
}

fn op() -> impl Strategy<Value = Op> {
    let i = 0..PATHS.len();
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

fn run_engine(tx: &mut Transaction, op: &Op) -> Reply {
    match *op {
        Op::Read(p) => Reply::Value(tx.value(&path(p)).map(|v| v.as_bytes().to_vec())),
        Op::Write(p, v, c) => {
            tx.write(&path(p), VALUES[v], c.map(DomId)).expect("write");
            Reply::Done
        }
        Op::Mkdir(p, c) => Reply::Flag(tx.mkdir(&path(p), c.map(DomId)).expect("mkdir").is_some()),
        Op::Rm(p) => Reply::Flag(tx.remove(&path(p)).expect("rm").is_some()),
        Op::Dir(p) => Reply::Names(tx.children(&path(p)).map(|c| c.iter().map(|n| n.to_string()).collect())),
        Op::GetPerms(p) => Reply::Perms(tx.perms(&path(p)).map(|x| x.to_wire())),
        Op::SetPerms(p, d) => Reply::Flag(tx.set_perms(&path(p), Perms::owned_by(DomId(d))).is_ok()),
        Op::Generation(p) => Reply::Generation(tx.generation(&path(p)).is_some()),
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

fn model_remove(m: &mut Model, p: &str) {
    if let Some(node) = m.remove(p) {
        for c in node.children {
            model_remove(m, &format!("{p}/{c}"));
        }
    }
}

fn run_model(m: &mut Model, op: &Op) -> Reply {
    match *op {
        Op::Read(p) => Reply::Value(m.get(PATHS[p]).map(|n| n.value.clone())),
        Op::Write(p, v, c) => {
            match m.get_mut(PATHS[p]) {
                Some(n) => n.value = VALUES[v].to_vec(),
                None => model_create(m, PATHS[p], VALUES[v], c),
            }
            Reply::Done
        }
        Op::Mkdir(p, c) => {
            let missing = !m.contains_key(PATHS[p]);
            if missing {
                model_create(m, PATHS[p], b"", c);
            }
            Reply::Flag(missing)
        }
        Op::Rm(p) => {
            let existed = m.contains_key(PATHS[p]);
            if existed {
                model_remove(m, PATHS[p]);
                let (parent, name) = parent_of(PATHS[p]);
                m.get_mut(&parent).expect("parent").children.retain(|c| *c != name);
            }
            Reply::Flag(existed)
        }
        Op::Dir(p) => Reply::Names(m.get(PATHS[p]).map(|n| n.children.clone())),
        Op::GetPerms(p) => Reply::Perms(m.get(PATHS[p]).map(|n| n.perms.clone())),
        Op::SetPerms(p, d) => Reply::Flag(match m.get_mut(PATHS[p]) {
            Some(n) => {
                n.perms = format!("n{d}\0").into_bytes();
                true
            }
            None => false,
        }),
        Op::Generation(p) => Reply::Generation(m.contains_key(PATHS[p])),
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

/// Runs the scripts interleaved as `choices` says; returns, per committed
/// transaction in commit order, (script index, fork point, replies, whether it
/// mutated nothing), and the number of conflicts.
fn execute(store: &Store, scripts: &[Script], choices: &[usize]) -> (Vec<(usize, usize, Vec<Reply>, bool)>, usize) {
    let mut running: Vec<Running> =
        scripts.iter().map(|_| Running { tx: None, next: 0, replies: vec![], forked_after: 0 }).collect();
    let mut done = vec![false; scripts.len()];
    let mut committed = Vec::new();
    let mut conflicts = 0;
    let mut choice = choices.iter().cycle();
    while let Some(&c) = choice.next() {
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
                r.replies.push(run_engine(tx, &scripts[i].ops[r.next]));
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
                    Ok(_) => committed.push((i, r.forked_after, std::mem::take(&mut r.replies), read_only)),
                    Err(CommitError::Conflict { .. }) => conflicts += 1,
                    Err(e) => panic!("unexpected commit error {e:?}"),
                }
            }
        }
    }
    (committed, conflicts)
}

fn script() -> impl Strategy<Value = Script> {
    (prop::collection::vec(op(), 0..6), prop::bool::weighted(0.85)).prop_map(|(ops, commit)| Script { ops, commit })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 3000, ..ProptestConfig::default() })]

    #[test]
    fn committed_transactions_are_serializable_in_commit_order(
        setup in prop::collection::vec(op(), 0..8),
        scripts in prop::collection::vec(script(), 1..5),
        choices in prop::collection::vec(0usize..64, 1..64),
    ) {
        let store = Store::new(Snapshot::new(Perms::owned_by(DomId(0))));
        let mut model = model_new();
        for op in &setup {
            store.update(|tx| Ok::<_, ()>(run_engine(tx, op))).expect("setup");
            run_model(&mut model, op);
        }
        prop_assert_eq!(model_of(&store.snapshot()), model.clone());

        let (committed, _) = execute(&store, &scripts, &choices);
        // Serial replay in commit order; the state after k commits is history[k].
        let mut history = vec![model.clone()];
        for (i, forked_after, replies, read_only) in &committed {
            let ops = &scripts[*i].ops;
            // A transaction that mutated nothing is serialized at its fork point.
            let read_only = *read_only;
            let mut state = if read_only { history[*forked_after].clone() } else { model.clone() };
            let expected: Vec<Reply> = ops.iter().map(|o| run_model(&mut state, o)).collect();
            prop_assert_eq!(replies, &expected, "transaction {} (forked after {} commits) got other replies than serial execution", i, forked_after);
            if !read_only {
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
        for d in 0..creators.len() {
            let home = format!("/local/domain/{}", d + 1);
            prop_assert!(snap.contains(&home) || creators[d].0 == 1, "{} missing", home);
        }
    }
}
