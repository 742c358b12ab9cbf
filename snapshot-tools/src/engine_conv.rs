//! Conversion between the stream's plain model and the engine's store
//! [`engine::Snapshot`], for live update and for checkpoints exported in
//! Xen's format.
//!
//! What does not carry over: the stream has no node generations (a loaded
//! store numbers its nodes afresh, in stream order) and the engine keeps no
//! per-entry `IGNORE` flag (C recomputes it; ours never leaks permissions of
//! a departed domain because RELEASE strips them).

use engine::{Access, DomId, Path, Perm as EnginePerm, Perms, Snapshot, TreeEntry};

use crate::model::{Node, Perm};

/// Why a stream's nodes do not make a store.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConvError {
    #[error("node {path:?}: invalid path")]
    Path { path: String },
    #[error("node {path:?}: invalid permission letter {letter:#04x}")]
    Letter { path: String, letter: u8 },
    #[error("node {path:?}: no permissions")]
    NoPerms { path: String },
    #[error("the nodes do not form a tree: {0}")]
    Tree(#[from] engine::BuildError),
}

fn perms_of(node: &Node) -> Result<Perms, ConvError> {
    let path = || node.path_str().into_owned();
    let entries = node
        .perms
        .iter()
        .map(|p| {
            let access =
                Access::from_letter(p.letter).ok_or_else(|| ConvError::Letter { path: path(), letter: p.letter })?;
            Ok(EnginePerm::new(access, DomId(p.domid)))
        })
        .collect::<Result<Vec<_>, ConvError>>()?;
    Perms::new(&entries).map_err(|_| ConvError::NoPerms { path: path() })
}

/// The committed nodes (those outside transactions) as a store version. Special
/// nodes may come anywhere (4.17 writes them first); every other node must
/// follow its parent, as C writes the tree.
pub fn to_engine(nodes: &[Node]) -> Result<Snapshot, ConvError> {
    let mut entries = Vec::with_capacity(nodes.len());
    // The root first, then the rest in stream order.
    let committed = || nodes.iter().filter(|n| n.conn_id == 0);
    let root = committed().find(|n| n.path == b"/");
    for (generation, node) in root.into_iter().chain(committed().filter(|n| n.path != b"/")).enumerate() {
        let path = Path::from_bytes(&node.path).map_err(|_| ConvError::Path { path: node.path_str().into_owned() })?;
        entries.push(TreeEntry {
            path,
            value: node.value.clone(),
            perms: perms_of(node)?,
            generation: generation as u64,
        });
    }
    Ok(Snapshot::from_entries(entries)?)
}

/// A store version's nodes as committed NODE_DATA records: the tree in pre-order
/// (parents first, children in creation order), then the special nodes.
pub fn from_engine(snapshot: &Snapshot) -> Vec<Node> {
    let node = |path: &str, n: &engine::Node| {
        let perms = n.perms().entries().iter().map(|p| Perm::new(p.access.letter() as u8, p.domid.0)).collect();
        Node::committed(path.as_bytes(), n.value().as_bytes(), perms)
    };
    let mut out: Vec<Node> = Vec::with_capacity(snapshot.len());
    snapshot.for_each_in_tree(|p, n| out.push(node(p, n)));
    let mut specials: Vec<Node> = snapshot.special_nodes().map(|(p, n)| node(p.as_str(), n)).collect();
    specials.sort_by(|a, b| a.path.cmp(&b.path));
    out.extend(specials);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_keeps_tree_order_values_and_perms() {
        let nodes = vec![
            Node::committed("@introduceDomain", "", vec![Perm::new(b'n', 0)]),
            Node::committed("/", "", vec![Perm::new(b'n', 0)]),
            Node::committed("/b", "\0bin", vec![Perm::new(b'r', 3), Perm::new(b'b', 5)]),
            Node::committed("/a", "x", vec![Perm::new(b'n', 0)]),
            Node::committed("/a/c", "", vec![Perm::new(b'w', 7)]),
        ];
        let store = to_engine(&nodes).expect("tree");
        store.check_consistent().expect("consistent");
        assert_eq!(store.get("/b").map(|n| n.value().as_bytes().to_vec()), Some(b"\0bin".to_vec()));
        let back = from_engine(&store);
        let paths: Vec<&[u8]> = back.iter().map(|n| n.path.as_slice()).collect();
        assert_eq!(paths, [&b"/"[..], b"/b", b"/a", b"/a/c", b"@introduceDomain"]);
        assert_eq!(back[1].perms, vec![Perm::new(b'r', 3), Perm::new(b'b', 5)]);
    }

    #[test]
    fn bad_nodes_are_errors() {
        let root = Node::committed("/", "", vec![Perm::new(b'n', 0)]);
        assert!(to_engine(&[root.clone(), Node::committed("/a/b", "", vec![Perm::new(b'n', 0)])]).is_err());
        assert!(to_engine(&[root.clone(), Node::committed("/a", "", vec![Perm::new(b'x', 0)])]).is_err());
        assert!(to_engine(&[root.clone(), Node::committed("/a", "", vec![])]).is_err());
        assert!(to_engine(&[root, Node::committed("/a b", "", vec![Perm::new(b'n', 0)])]).is_err());
    }
}
