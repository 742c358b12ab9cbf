//! The node operations (PROTOCOL.md §2.2, §4, §5): READ, WRITE, MKDIR, RM,
//! DIRECTORY, DIRECTORY_PART, GET_PERMS, SET_PERMS.
//!
//! Each runs against a [`Transaction`]: the client's own, or a one-request
//! transaction that the core commits at once. Reads go through the
//! transaction's recording accessors, so everything a reply depends on is
//! part of the commit rule.

use alloc::format;
use alloc::string::String;
use alloc::vec::Vec;

use engine::{Children, DomId, Path, Perm, Perms, Transaction};
use wire::{Op, one_arg, parse_lenient_u32, split_args, split_first};

use crate::access::{Caller, Need, Rights};
use crate::error::{Error, Result};
use crate::quota::{Quota, QuotaTable};
use crate::reply::ok;

/// Read access to a tree: a transaction (which records what is read, for
/// its commit rule) or a plain snapshot (non-transactional reads, which
/// need no recording and no commit).
pub(crate) trait View {
    fn value(&mut self, path: &Path) -> Option<engine::Value>;
    fn perms(&mut self, path: &Path) -> Option<Perms>;
    fn children(&mut self, path: &Path) -> Option<Children>;
    fn generation(&mut self, path: &Path) -> Option<u64>;
    /// `f` of the node itself, for a view that records nothing: one lookup
    /// where asking aspect by aspect takes several. `None` from a view that
    /// records what is read (ask it aspect by aspect).
    fn with_node<R>(&mut self, _path: &str, _f: impl FnOnce(Option<&engine::Node>) -> R) -> Option<R> {
        None
    }
}

impl View for Transaction {
    fn value(&mut self, path: &Path) -> Option<engine::Value> {
        Transaction::value(self, path)
    }
    fn perms(&mut self, path: &Path) -> Option<Perms> {
        Transaction::perms(self, path)
    }
    fn children(&mut self, path: &Path) -> Option<Children> {
        Transaction::children(self, path)
    }
    fn generation(&mut self, path: &Path) -> Option<u64> {
        Transaction::generation(self, path)
    }
}

/// A committed snapshot read outside any transaction.
pub(crate) struct SnapshotView<'a>(pub &'a engine::Snapshot);

impl View for SnapshotView<'_> {
    fn value(&mut self, path: &Path) -> Option<engine::Value> {
        self.0.get(path.as_str()).map(|n| n.value().clone())
    }
    fn perms(&mut self, path: &Path) -> Option<Perms> {
        self.0.get(path.as_str()).map(|n| n.perms().clone())
    }
    fn children(&mut self, path: &Path) -> Option<Children> {
        self.0.get(path.as_str()).map(|n| n.children().clone())
    }
    fn generation(&mut self, path: &Path) -> Option<u64> {
        self.0.get(path.as_str()).map(|n| n.generation())
    }
    fn with_node<R>(&mut self, path: &str, f: impl FnOnce(Option<&engine::Node>) -> R) -> Option<R> {
        Some(f(self.0.get(path)))
    }
}

/// Whether `op` only reads (and so can run on a snapshot outside a transaction).
pub(crate) fn is_read(op: Op) -> bool {
    matches!(op, Op::Read | Op::Directory | Op::DirectoryPart | Op::GetPerms)
}

/// What a node operation needs to know about its caller.
pub(crate) struct Ctx<'a> {
    pub caller: Caller,
    /// The quotas that apply to the caller (its domain's, else the global ones).
    pub quotas: &'a QuotaTable,
    /// Whether the hypervisor knows a domain: SET_PERMS refuses an owner
    /// that does not exist (§2.2).
    pub domain_exists: &'a dyn Fn(DomId) -> bool,
}

impl Ctx<'_> {
    fn limited(&self) -> bool {
        !self.caller.privileged
    }

    /// Canonicalizes a path argument (§3): relative paths are under the
    /// caller's home; `@` paths only where `special` allows; unprivileged
    /// callers are held to `path-max` (§3.3).
    pub fn path(&self, raw: &[u8], special: bool) -> Result<Path> {
        let path = absolute(self.caller.domid, raw)?;
        if path.is_special() && !special {
            return Err(Error::BadRequest);
        }
        if self.limited() && !path.is_special() {
            self.quotas.check(Quota::PathMax, checked_length(path.as_str()))?;
        }
        Ok(path)
    }

    /// An absolute path argument as it lies in the request, for a lookup
    /// that needs no `Path` built, if [`Ctx::path`] would take it as it is
    /// (no home to prefix, not special, within `path-max`). Not validated:
    /// the tree holds only valid paths, so one found there is valid, and
    /// one not found takes the general way, which validates it.
    fn borrowed<'r>(&self, raw: &'r [u8]) -> Option<&'r str> {
        let path = core::str::from_utf8(raw).ok().filter(|p| p.starts_with('/'))?;
        let too_long = self.limited() && self.quotas.exceeded(Quota::PathMax, checked_length(path));
        (!too_long).then_some(path)
    }

    fn rights(&self, perms: &Perms) -> Rights {
        self.caller.rights(perms)
    }

    /// The error for a missing `path` (§5.4): ENOENT only if the caller holds
    /// `need` on the nearest existing ancestor, else EACCES.
    fn missing(&self, tx: &mut impl View, path: &Path, need: Need) -> Error {
        if self.caller.privileged {
            return Error::NotFound;
        }
        let mut cur = path.parent();
        while let Some(p) = cur {
            if let Some(perms) = tx.perms(&p) {
                return if self.rights(&perms).reveal(need) { Error::NotFound } else { Error::Denied };
            }
            cur = p.parent();
        }
        Error::Denied
    }

    /// The permissions of an existing node the caller holds `need` on.
    fn checked(&self, tx: &mut impl View, path: &Path, need: Need) -> Result<Perms> {
        let perms = tx.perms(path).ok_or_else(|| self.missing(tx, path, need))?;
        if self.rights(&perms).allow(need) { Ok(perms) } else { Err(Error::Denied) }
    }

    fn creator(&self) -> Option<DomId> {
        self.limited().then_some(self.caller.domid)
    }
}

/// A path argument made absolute: relative paths are under the home of
/// `domid` (§3.2); absolute and `@` paths are taken as they are.
pub(crate) fn absolute(domid: DomId, raw: &[u8]) -> core::result::Result<Path, engine::PathError> {
    match raw.first() {
        Some(b'/' | b'@') => Path::from_bytes(raw),
        _ => {
            let mut abs = home_of(domid).into_bytes();
            abs.push(b'/');
            abs.extend_from_slice(raw);
            Path::from_bytes(&abs)
        }
    }
}

/// `/local/domain/<domid>`: a domain's home path (§3.2, GET_DOMAIN_PATH).
pub(crate) fn home_of(domid: DomId) -> String {
    format!("/local/domain/{}", domid.0)
}

/// The length §3.3 checks: after `/local/domain/<digits>/` if the path
/// starts so, else all of it.
fn checked_length(s: &str) -> usize {
    if let Some(rest) = s.strip_prefix("/local/domain/") {
        let digits = rest.bytes().take_while(u8::is_ascii_digit).count();
        if digits > 0
            && let Some(after) = rest[digits..].strip_prefix('/')
        {
            return after.len();
        }
    }
    s.len()
}

/// C's accounting size of a stored node.
pub(crate) fn node_size_of(node: &engine::Node) -> usize {
    node_size(node.perms().entries().len(), node.value().len(), node.children())
}

/// C's accounting size of a node (node-size quota, §9.1).
fn node_size(perms: usize, value: usize, children: &Children) -> usize {
    16 + 8 * perms + value + children.wire_len()
}

/// Runs one node operation.
pub(crate) fn run(ctx: &Ctx<'_>, tx: &mut Transaction, op: Op, payload: &[u8]) -> Result<Vec<u8>> {
    match op {
        Op::Write => write(ctx, tx, payload),
        Op::Mkdir => mkdir(ctx, tx, payload),
        Op::Rm => rm(ctx, tx, payload),
        Op::SetPerms => set_perms(ctx, tx, payload),
        _ => run_read(ctx, tx, op, payload),
    }
}

/// Runs one reading node operation on any view.
pub(crate) fn run_read(ctx: &Ctx<'_>, view: &mut impl View, op: Op, payload: &[u8]) -> Result<Vec<u8>> {
    match op {
        Op::Read => read(ctx, view, payload),
        Op::Directory => directory(ctx, view, payload),
        Op::DirectoryPart => directory_part(ctx, view, payload),
        Op::GetPerms => get_perms(ctx, view, payload),
        _ => Err(Error::Unsupported),
    }
}

fn one_path(ctx: &Ctx<'_>, payload: &[u8], special: bool) -> Result<Path> {
    ctx.path(one_arg(payload).ok_or(Error::BadRequest)?, special)
}

/// Outside a transaction, the usual read (an absolute path to an existing
/// node) on one lookup, with no `Path` built: the path is looked up where
/// it lies in the request. `f` of the node if the caller may read it;
/// `None` for every other case (a missing node, an invalid path), which
/// takes the general way.
fn read_in_place<R>(
    ctx: &Ctx<'_>,
    tx: &mut impl View,
    raw: &[u8],
    f: impl FnOnce(&engine::Node) -> R,
) -> Option<Result<R>> {
    let path = ctx.borrowed(raw)?;
    tx.with_node(path, |node| if_readable(ctx, node, f)).flatten()
}

/// The checks of [`Ctx::checked`] on a node in hand: `f` of it if the caller
/// may read it, `Denied` if not; `None` if it is missing.
fn if_readable<R>(ctx: &Ctx<'_>, node: Option<&engine::Node>, f: impl FnOnce(&engine::Node) -> R) -> Option<Result<R>> {
    node.map(|n| if ctx.rights(n.perms()).allow(Need::Read) { Ok(f(n)) } else { Err(Error::Denied) })
}

fn read(ctx: &Ctx<'_>, tx: &mut impl View, payload: &[u8]) -> Result<Vec<u8>> {
    let raw = one_arg(payload).ok_or(Error::BadRequest)?;
    let value = |n: &engine::Node| n.value().as_bytes().to_vec();
    if let Some(found) = read_in_place(ctx, tx, raw, value) {
        return found;
    }
    let path = ctx.path(raw, false)?;
    // Outside a transaction: the checks of `checked` on one lookup.
    if let Some(found) = tx.with_node(path.as_str(), |node| if_readable(ctx, node, value)) {
        return found.unwrap_or_else(|| Err(ctx.missing(tx, &path, Need::Read)));
    }
    ctx.checked(tx, &path, Need::Read)?;
    Ok(tx.value(&path).map(|v| v.as_bytes().to_vec()).unwrap_or_default())
}

fn write(ctx: &Ctx<'_>, tx: &mut Transaction, payload: &[u8]) -> Result<Vec<u8>> {
    let (raw, value) = split_first(payload).ok_or(Error::BadRequest)?;
    let path = ctx.path(raw, false)?;
    // Outside a transaction, an existing node is checked and written on
    // one lookup.
    let allowed = |n: &engine::Node| may_overwrite(ctx, n.perms(), n.children(), value.len());
    if let Some(done) = tx.overwrite(&path, value, allowed) {
        return done.map(|_| ok());
    }
    if let Some(perms) = tx.perms(&path) {
        let children = if ctx.limited() { tx.children(&path).unwrap_or_default() } else { Children::default() };
        may_overwrite(ctx, &perms, &children, value.len())?;
    } else {
        check_creation(ctx, tx, &path, value.len())?;
    }
    tx.write(&path, value, ctx.creator())?;
    Ok(ok())
}

/// The checks of WRITE on an existing node: write access, and for
/// unprivileged callers the node-size quota of the node as it would be.
fn may_overwrite(ctx: &Ctx<'_>, perms: &Perms, children: &Children, value: usize) -> Result<()> {
    if !ctx.rights(perms).write {
        return Err(Error::Denied);
    }
    if ctx.limited() {
        ctx.quotas.check(Quota::NodeSize, node_size(perms.entries().len(), value, children))?;
    }
    Ok(())
}

fn mkdir(ctx: &Ctx<'_>, tx: &mut Transaction, payload: &[u8]) -> Result<Vec<u8>> {
    let path = one_path(ctx, payload, false)?;
    if let Some(perms) = tx.perms(&path) {
        // Nothing changes, but C still wants write access (§2.2 MKDIR).
        return if ctx.rights(&perms).write { Ok(ok()) } else { Err(Error::Denied) };
    }
    check_creation(ctx, tx, &path, 0)?;
    tx.mkdir(&path, ctx.creator())?;
    Ok(ok())
}

/// Checks creating the missing `path` (§4.2): write access on the nearest
/// existing ancestor and, for unprivileged callers, the node quota and the
/// node-size quota of the new node and of the ancestor that gains a child.
fn check_creation(ctx: &Ctx<'_>, tx: &mut Transaction, path: &Path, value_len: usize) -> Result<()> {
    // Find the nearest existing ancestor without recording the missing
    // levels: the creation itself records them, as levels it may share
    // with a concurrent creation (engine::txn, "implicit").
    let mut first_missing = path.clone();
    let mut missing = Vec::new();
    let mut cur = path.parent();
    let ancestor = loop {
        let Some(p) = cur else { return Err(Error::NotFound) };
        if tx.view().contains(p.as_str()) {
            break p;
        }
        cur = p.parent();
        missing.push(p.clone());
        first_missing = p;
    };
    let perms = tx.perms(&ancestor).ok_or(Error::NotFound)?;
    if !ctx.rights(&perms).write {
        // The refusal depends on which levels are missing: record them.
        for p in &missing {
            tx.exists(p);
        }
        return Err(Error::Denied);
    }
    if ctx.limited() {
        let quotas = ctx.quotas;
        // Read without recording: the ancestor's size must not become part
        // of the commit rule (siblings created concurrently would conflict);
        // a transaction re-checks it at commit instead.
        let view = tx.view();
        let owned = view.owned_count(ctx.caller.domid) as usize;
        let entries = perms.entries().len();
        let grown = view.get(ancestor.as_str()).map_or(0, node_size_of) + first_missing.name().len() + 1;
        quotas.check(Quota::Nodes, owned + 1)?;
        quotas.check(Quota::NodeSize, node_size(entries, value_len, &Children::default()))?;
        quotas.check(Quota::NodeSize, grown)?;
    }
    Ok(())
}

fn rm(ctx: &Ctx<'_>, tx: &mut Transaction, payload: &[u8]) -> Result<Vec<u8>> {
    let path = one_path(ctx, payload, false)?;
    match tx.perms(&path) {
        Some(perms) => {
            if !ctx.rights(&perms).write {
                return Err(Error::Denied);
            }
            if path.is_root() {
                return Err(Error::BadRequest);
            }
            tx.remove(&path)?;
            Ok(ok())
        }
        None => {
            // Missing: OK if the parent exists, ENOENT if not; but first the
            // hiding rule, as C applies it (§2.2 RM).
            let err = ctx.missing(tx, &path, Need::Write);
            if err == Error::Denied {
                return Err(err);
            }
            match path.parent() {
                Some(parent) if tx.exists(&parent) => Ok(ok()),
                _ => Err(Error::NotFound),
            }
        }
    }
}

fn directory(ctx: &Ctx<'_>, tx: &mut impl View, payload: &[u8]) -> Result<Vec<u8>> {
    let raw = one_arg(payload).ok_or(Error::BadRequest)?;
    if let Some(found) = read_in_place(ctx, tx, raw, |n| n.children().to_wire()) {
        return found;
    }
    let path = ctx.path(raw, false)?;
    ctx.checked(tx, &path, Need::Read)?;
    Ok(tx.children(&path).unwrap_or_default().to_wire())
}

fn directory_part(ctx: &Ctx<'_>, tx: &mut impl View, payload: &[u8]) -> Result<Vec<u8>> {
    if payload.iter().filter(|&&b| b == 0).count() != 2 {
        return Err(Error::BadRequest);
    }
    let mut args = split_args(payload);
    let (Some(raw), Some(offset)) = (args.next(), args.next()) else { return Err(Error::BadRequest) };
    let path = ctx.path(raw, false)?;
    ctx.checked(tx, &path, Need::Read)?;
    let generation = tx.generation(&path).unwrap_or_default();
    let list = tx.children(&path).unwrap_or_default().to_wire();
    let offset = parse_lenient_u32(offset) as usize;

    let mut reply = format!("{generation}").into_bytes();
    reply.push(0);
    if offset >= list.len() {
        reply.push(0);
        return Ok(reply);
    }
    // Whole entries while they fit; an extra NUL marks the last part.
    let limit = wire::PAYLOAD_MAX - reply.len() - 1;
    let mut so_far = 0;
    let mut rest = &list[offset..];
    while let Some((name, after)) = split_first(rest) {
        if so_far + name.len() >= limit {
            break;
        }
        reply.extend_from_slice(name);
        reply.push(0);
        so_far += name.len() + 1;
        rest = after;
    }
    if rest.is_empty() {
        reply.push(0);
    }
    Ok(reply)
}

fn get_perms(ctx: &Ctx<'_>, tx: &mut impl View, payload: &[u8]) -> Result<Vec<u8>> {
    let raw = one_arg(payload).ok_or(Error::BadRequest)?;
    if let Some(found) = read_in_place(ctx, tx, raw, |n| n.perms().to_wire()) {
        return found;
    }
    let path = ctx.path(raw, true)?;
    Ok(ctx.checked(tx, &path, Need::Read)?.to_wire())
}

fn set_perms(ctx: &Ctx<'_>, tx: &mut Transaction, payload: &[u8]) -> Result<Vec<u8>> {
    // The check order of §2.2 SET_PERMS.
    let mut args = split_args(payload);
    let raw = args.next().ok_or(Error::BadRequest)?;
    let strings: Vec<&[u8]> = args.collect();
    if strings.is_empty() {
        return Err(Error::BadRequest);
    }
    if ctx.limited() {
        ctx.quotas.check(Quota::NodePermissions, strings.len())?;
    }
    let entries: Vec<Perm> = strings.iter().map(|s| Perm::parse(s)).collect::<Option<_>>().ok_or(Error::BadRequest)?;
    let perms = Perms::new(&entries).map_err(|_| Error::BadRequest)?;
    if !(ctx.domain_exists)(perms.owner()) {
        return Err(Error::NotFound);
    }
    let path = ctx.path(raw, true)?;
    let old = ctx.checked(tx, &path, Need::WriteOwner)?;
    if ctx.limited() && old.owner() != perms.owner() {
        return Err(Error::OwnerChange);
    }
    if ctx.limited() && !path.is_special() {
        let value = tx.value(&path).map_or(0, |v| v.len());
        let children = tx.children(&path).unwrap_or_default();
        ctx.quotas.check(Quota::NodeSize, node_size(entries.len(), value, &children))?;
    }
    tx.set_perms(&path, perms)?;
    Ok(ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn checked_length_skips_the_domain_prefix() {
        assert_eq!(checked_length("/local/domain/5/abc"), 3);
        assert_eq!(checked_length("/local/domain/5"), 15);
        assert_eq!(checked_length("/local/domain/x/abc"), 19);
        assert_eq!(checked_length("/vm/abc"), 7);
    }
}
