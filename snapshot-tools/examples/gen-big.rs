//! Writes a large stream for timing `xenstore-inspect summary`:
//! `cargo run --release -p snapshot-tools --example gen-big -- OUT [NODES]`
//! (default 1,000,000 nodes: 1000 domains under /local/domain, each with
//! a ring connection and a watch, and the rest as leaf nodes spread over them).

use snapshot_tools::{
    Connection, ConnectionKind, DOMID_INVALID, GlobalData, Node, Perm, Stream, Watch, WriteFormat, write_stream,
};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let out = args.next().ok_or("usage: gen-big OUT [NODES]")?;
    let total: usize = match args.next() {
        Some(n) => n.parse()?,
        None => 1_000_000,
    };
    let domains: u16 = 1000;
    let mut snap = Stream { version: 1, global: Some(GlobalData { socket_fd: 3, evtchn_fd: 4 }), ..Stream::default() };
    let n0 = || vec![Perm::new(b'n', 0)];
    snap.nodes.push(Node::committed("@introduceDomain", "", n0()));
    snap.nodes.push(Node::committed("@releaseDomain", "", n0()));
    snap.nodes.push(Node::committed("/", "", n0()));
    snap.nodes.push(Node::committed("/local", "", n0()));
    snap.nodes.push(Node::committed("/local/domain", "", n0()));
    let per_domain = total.saturating_sub(snap.nodes.len()) / usize::from(domains);
    for d in 1..=domains {
        let conn_id = u32::from(d);
        snap.connections.push(Connection {
            conn_id,
            kind: ConnectionKind::Ring { domid: d, target: DOMID_INVALID, evtchn: u32::from(d) + 10 },
            input: Vec::new(),
            output: Vec::new(),
            partial_response_len: 0,
            unique_id: None,
        });
        snap.watches.push(Watch {
            conn_id,
            path: format!("/local/domain/{d}/device").into_bytes(),
            token: b"tok".to_vec(),
            depth: None,
        });
        let perms = vec![Perm::new(b'n', d)];
        snap.nodes.push(Node::committed(format!("/local/domain/{d}").as_str(), "", perms.clone()));
        for i in 1..per_domain {
            snap.nodes.push(Node::committed(
                format!("/local/domain/{d}/key{i}").as_str(),
                format!("value-{i}").as_str(),
                perms.clone(),
            ));
        }
    }
    let bytes = write_stream(&snap, WriteFormat::C417)?;
    std::fs::write(&out, &bytes)?;
    println!("{out}: {} nodes, {} bytes", snap.nodes.len(), bytes.len());
    Ok(())
}
