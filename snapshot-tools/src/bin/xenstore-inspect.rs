//! `xenstore-inspect`: offline inspector for xenstore live-update state
//! files (C `state_dump` binary streams and oxenstored `db` text dumps),
//! and rxenstored's own checkpoints (a `checkpoint-*.rxs` file or a state
//! directory).
//!
//! Exit status: 0 = fine; 1 = the file has problems (`validate`) or the
//! files differ (`diff`); 2 = the file could not be read at all (or, for
//! `convert`, not converted or not written).

use std::io::{IsTerminal, Write};
use std::path::Path;
use std::process::ExitCode;

use clap::Parser;
use serde_json::json;
use snapshot_tools::bytes::escape;
use snapshot_tools::checkpoint::{self, CheckpointError};
use snapshot_tools::cli::{Cli, Cmd, StreamVersion};
use snapshot_tools::cver;
use snapshot_tools::read::Item;
use snapshot_tools::report::{self, Style};
use snapshot_tools::{Parsed, ReadError, Severity, WriteError, WriteFormat, oxenstored, read_stream, write_stream};

const KIND_STREAM: &str = "binary stream";
const KIND_OX: &str = "oxenstored LU text";
const KIND_CHECKPOINT: &str = "rxenstored checkpoint";
const KIND_STATE_DIR: &str = "rxenstored state directory";

/// Errors that stop the inspector; each names the file.
#[derive(Debug, thiserror::Error)]
enum InspectError {
    #[error("{file}: cannot read: {source}")]
    Io { file: String, source: std::io::Error },
    #[error("{file}: {source}")]
    Stream { file: String, source: ReadError },
    #[error("{file}: {source}")]
    Oxenstored { file: String, source: oxenstored::OxError },
    #[error("{file}: offset 0x0: oxenstored persistent-store text, not a live-update dump (not supported)")]
    Persistent { file: String },
    #[error("{0}")]
    State(CheckpointError),
    #[error(
        "{file}: offset 0x{offset:04x}: {problem}; not converted (a damaged file cannot be reproduced, see `validate`)"
    )]
    Damaged { file: String, offset: u64, problem: String },
    #[error("{file}: cannot be written as a version {version} stream: {source}")]
    Unwritable { file: String, version: u32, source: WriteError },
    #[error("{file}: cannot write: {source}")]
    WriteOut { file: String, source: std::io::Error },
    #[error("{file}: internal error: the converted stream does not read back cleanly: {what}")]
    NotReadBack { file: String, what: String },
    #[error("{file}: no node {path:?}")]
    NoNode { file: String, path: String },
    #[error("cannot write output: {0}")]
    Output(std::io::Error),
}

/// A loaded file of any supported kind.
struct Loaded {
    name: String,
    kind: &'static str,
    parsed: Parsed,
    /// For rxenstored state: the last commit included and repair warnings.
    state_note: Option<String>,
}

fn load(path: &Path) -> Result<Loaded, InspectError> {
    let name = path.display().to_string();
    if path.is_dir() {
        let st = checkpoint::load_dir(path).map_err(InspectError::State)?;
        return Ok(Loaded { name, kind: KIND_STATE_DIR, state_note: Some(state_note(&st)), parsed: st.parsed });
    }
    let data = std::fs::read(path).map_err(|source| InspectError::Io { file: name.clone(), source })?;
    if checkpoint::is_checkpoint(&data) {
        drop(data);
        let st = checkpoint::load_file(path).map_err(InspectError::State)?;
        return Ok(Loaded { name, kind: KIND_CHECKPOINT, state_note: Some(state_note(&st)), parsed: st.parsed });
    }
    if data.starts_with(oxenstored::HEADER.as_bytes()) {
        let parsed =
            oxenstored::read_dump(&data).map_err(|source| InspectError::Oxenstored { file: name.clone(), source })?;
        return Ok(Loaded { name, kind: KIND_OX, parsed, state_note: None });
    }
    if data.starts_with(b"/") && data.contains(&b'{') {
        return Err(InspectError::Persistent { file: name });
    }
    let parsed = read_stream(&data).map_err(|source| InspectError::Stream { file: name.clone(), source })?;
    Ok(Loaded { name, kind: KIND_STREAM, parsed, state_note: None })
}

fn state_note(st: &checkpoint::LoadedState) -> String {
    let mut s = format!(
        "rxenstored state after commit {} (tree, domains, guest watches and quotas; no sockets, pending data or transactions)",
        st.seq
    );
    for w in &st.warnings {
        s += &format!("; repaired: {w}");
    }
    s
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let style = Style { colour: !cli.json && std::io::stdout().is_terminal() };
    match run(&cli, style) {
        Ok(code) => code,
        Err(InspectError::Output(e)) if e.kind() == std::io::ErrorKind::BrokenPipe => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("xenstore-inspect: {e}");
            ExitCode::from(2)
        }
    }
}

fn out(text: &str) -> Result<(), InspectError> {
    let mut o = std::io::stdout().lock();
    o.write_all(text.as_bytes()).map_err(InspectError::Output)?;
    if !text.ends_with('\n') {
        o.write_all(b"\n").map_err(InspectError::Output)?;
    }
    Ok(())
}

fn json_out(v: &serde_json::Value) -> Result<(), InspectError> {
    out(&serde_json::to_string_pretty(v).unwrap_or_else(|e| format!("{{\"error\": \"{e}\"}}")))
}

fn run(cli: &Cli, st: Style) -> Result<ExitCode, InspectError> {
    match &cli.cmd {
        Cmd::Summary { file } => summary(file, cli.json, st),
        Cmd::Tree { file, path } => tree(file, path.as_deref(), cli.json),
        Cmd::Get { file, path } => get(file, path, cli.json),
        Cmd::Records { file, hex } => records(file, *hex, cli.json),
        Cmd::Validate { file, as_c } => validate(file, *as_c, cli.json, st),
        Cmd::Diff { file_a, file_b } => diff(file_a, file_b, cli.json, st),
        Cmd::Convert { to, input, output } => {
            convert(load(input)?, *to, output, cli.json)?;
            Ok(ExitCode::SUCCESS)
        }
    }
}

/// `summary`: what the file holds and who wrote it.
fn summary(file: &Path, json: bool, st: Style) -> Result<ExitCode, InspectError> {
    let l = load(file)?;
    let mut s = report::summarize(&l.name, &l.parsed);
    s.kind = l.kind.to_string();
    if l.kind != KIND_STREAM {
        s.producer = match &l.state_note {
            Some(note) => note.clone(),
            None => "oxenstored (text dump; no pending data, transactions, targets or quotas)".into(),
        };
        s.evidence.clear();
        s.preamble_ok_c417 = false;
        s.preamble_ok_c421 = false;
    }
    if json {
        json_out(&serde_json::to_value(&s).unwrap_or_default())?;
    } else {
        out(&s.text(st))?;
    }
    // The process ends here: freeing a million nodes one by one
    // would only add to the time the operator waits.
    std::mem::forget(l);
    Ok(ExitCode::SUCCESS)
}

/// `tree`: the nodes below a path (the whole tree by default).
fn tree(file: &Path, path: Option<&str>, json: bool) -> Result<ExitCode, InspectError> {
    let l = load(file)?;
    let tree = report::Tree::build(&l.parsed.snapshot);
    let root = path.unwrap_or("/");
    if root != "/" && tree.get(root.as_bytes()).is_none() {
        return Err(InspectError::NoNode { file: l.name, path: root.into() });
    }
    let entries = tree.list(root.as_bytes());
    if json {
        json_out(&json!({"file": l.name, "root": root, "nodes": entries}))?;
    } else {
        let text: Vec<String> = entries.iter().map(|e| e.text()).collect();
        out(&text.join("\n"))?;
    }
    Ok(ExitCode::SUCCESS)
}

/// `get`: one node, with its permissions and where it sits in the file.
fn get(file: &Path, path: &str, json: bool) -> Result<ExitCode, InspectError> {
    let l = load(file)?;
    let snap = &l.parsed.snapshot;
    let Some((i, node)) = snap.nodes.iter().enumerate().find(|(_, n)| n.conn_id == 0 && n.path == path.as_bytes())
    else {
        return Err(InspectError::NoNode { file: l.name, path: path.into() });
    };
    let offset = l.parsed.offset_of(Item::Node(i));
    let perms = snapshot_tools::perms_display(&node.perms);
    if json {
        json_out(&json!({
            "path": path, "value": escape(&node.value), "value_bytes": node.value,
            "perms": perms, "offset": offset,
        }))?;
    } else {
        let at = offset.map(|o| format!("  @0x{o:04x}")).unwrap_or_default();
        out(&format!("{path} = \"{}\"  ({perms}){at}", escape(&node.value)))?;
    }
    Ok(ExitCode::SUCCESS)
}

/// `records`: every record of a stream, with `--hex` its bytes.
fn records(file: &Path, hex: bool, json: bool) -> Result<ExitCode, InspectError> {
    let l = load(file)?;
    if l.kind != KIND_STREAM {
        out(&format!("{}: {} has no binary records; use summary or tree", l.name, l.kind))?;
        return Ok(ExitCode::SUCCESS);
    }
    let lines = report::record_lines(&l.parsed);
    let data = if hex { std::fs::read(file).unwrap_or_default() } else { Vec::new() };
    if json {
        let recs: Vec<serde_json::Value> = lines
            .iter()
            .map(|r| {
                let mut v = serde_json::to_value(r).unwrap_or_default();
                if hex {
                    v["hex"] = json!(record_hex(&data, r.offset, r.length).join("\n"));
                }
                v
            })
            .collect();
        json_out(&json!({"header": report::header_line(&l.parsed), "records": recs}))?;
    } else {
        let mut text = report::header_line(&l.parsed);
        for r in &lines {
            text.push('\n');
            text.push_str(&r.text());
            if hex {
                for h in record_hex(&data, r.offset, r.length) {
                    text.push('\n');
                    text.push_str(&h);
                }
            }
        }
        out(&text)?;
    }
    Ok(ExitCode::SUCCESS)
}

/// `validate`: the findings, and with `--as-c` whether that C version
/// would restore the file; exit status 1 when it is not clean.
fn validate(file: &Path, as_c: Option<cver::CVersion>, json: bool, st: Style) -> Result<ExitCode, InspectError> {
    let l = load(file)?;
    let errors = l.parsed.findings.iter().filter(|f| f.severity == Severity::Error).count();
    let verdict = as_c.map(|v| {
        let mut verdict = cver::check(&l.parsed, v);
        if l.kind != KIND_STREAM {
            verdict.accepted = false;
            verdict.breaks.insert(
                0,
                cver::RuleBreak {
                    offset: 0,
                    rule: "2.3",
                    message: format!("{}: C xenstored cannot load this format", l.kind),
                },
            );
        }
        verdict
    });
    let clean = errors == 0 && verdict.as_ref().is_none_or(|v| v.accepted);
    if json {
        let findings: Vec<serde_json::Value> = l
            .parsed
            .findings
            .iter()
            .map(|f| json!({"offset": f.offset, "severity": f.severity, "message": f.problem.to_string()}))
            .collect();
        json_out(&json!({"file": l.name, "clean": clean, "errors": errors, "findings": findings, "c": verdict}))?;
    } else {
        let mut t = String::new();
        for f in &l.parsed.findings {
            let line = format!("{}: {f}", l.name);
            t += &(if f.severity == Severity::Error { st.err(&line) } else { st.warn(&line) } + "\n");
        }
        t += &format!("{}: {} error(s), {} finding(s)\n", l.name, errors, l.parsed.findings.len());
        if let Some(v) = &verdict {
            match v.breaks.first() {
                None => t += &st.ok(&format!("C {}: would restore this file\n", v.version)),
                Some(b) => {
                    t += &st.err(&format!(
                        "C {}: would NOT restore this file: first rule broken ({}) @0x{:04x}: {}\n",
                        v.version, b.rule, b.offset, b.message
                    ));
                    for b in &v.breaks[1..] {
                        t += &format!("  also ({}) @0x{:04x}: {}\n", b.rule, b.offset, b.message);
                    }
                }
            }
            for d in &v.dropped {
                t += &format!("  C {} drops ({}) @0x{:04x}: {}\n", v.version, d.rule, d.offset, d.message);
            }
        }
        t += &(if clean { st.ok("result: clean") } else { st.err("result: NOT clean") });
        out(&t)?;
    }
    Ok(if clean { ExitCode::SUCCESS } else { ExitCode::from(1) })
}

/// `diff`: what differs between two files; exit status 1 when anything does.
fn diff(file_a: &Path, file_b: &Path, json: bool, st: Style) -> Result<ExitCode, InspectError> {
    let (a, b) = (load(file_a)?, load(file_b)?);
    let d = report::diff(&a.parsed.snapshot, &b.parsed.snapshot);
    if json {
        json_out(&json!({"a": a.name, "b": b.name, "same": d.is_empty(), "diff": d}))?;
    } else if d.is_empty() {
        out(&format!("{} and {}: no differences", a.name, b.name))?;
    } else {
        let mut t = format!("--- {}\n+++ {}\n", a.name, b.name);
        for (title, lines) in
            [("nodes", &d.nodes), ("connections", &d.connections), ("watches", &d.watches), ("other", &d.other)]
        {
            if !lines.is_empty() {
                t += &format!("{}\n", st.head(&format!("{title}:")));
                for l in lines {
                    t += &format!("  {l}\n");
                }
            }
        }
        out(&t)?;
    }
    Ok(if d.is_empty() { ExitCode::SUCCESS } else { ExitCode::from(1) })
}

/// `convert`: the loaded file as a stream of version `to`, written to
/// `output` only once it is known to be writable and to read back cleanly.
fn convert(l: Loaded, to: StreamVersion, output: &Path, json: bool) -> Result<(), InspectError> {
    if let Some(f) = l.parsed.first_error() {
        return Err(InspectError::Damaged { file: l.name, offset: f.offset, problem: f.problem.to_string() });
    }
    let version = to.number();
    let from_version = l.parsed.snapshot.version;
    let mut snap = l.parsed.snapshot;
    // Same version of a binary stream: keep its layout (special nodes
    // where they were), so the bytes come back unchanged. Otherwise the
    // layout the C writer of that version uses.
    let format = if l.kind == KIND_STREAM && from_version == version {
        WriteFormat::detect(&snap)
    } else {
        WriteFormat::for_version(version)
    };
    snap.version = version;
    let bytes = write_stream(&snap, format).map_err(|source| InspectError::Unwritable {
        file: l.name.clone(),
        version,
        source,
    })?;
    let out_name = output.display().to_string();
    let back =
        read_stream(&bytes).map_err(|e| InspectError::NotReadBack { file: out_name.clone(), what: e.to_string() })?;
    if let Some(f) = back.first_error() {
        return Err(InspectError::NotReadBack { file: out_name, what: f.to_string() });
    }
    std::fs::write(output, &bytes).map_err(|source| InspectError::WriteOut { file: out_name.clone(), source })?;
    if json {
        json_out(&json!({
            "input": l.name, "input_kind": l.kind, "input_version": from_version,
            "output": out_name, "version": version, "bytes": bytes.len(),
            "records": back.records.len(), "nodes": back.snapshot.nodes.len(),
        }))
    } else {
        out(&format!(
            "{} ({}, version {from_version}) -> {out_name}: version {version} stream, {} bytes, {} records, {} nodes",
            l.name,
            l.kind,
            bytes.len(),
            back.records.len(),
            back.snapshot.nodes.len()
        ))
    }
}

/// Hex dump lines of one record (header included), bounded by the file.
fn record_hex(data: &[u8], offset: u64, length: u32) -> Vec<String> {
    let start = usize::try_from(offset).unwrap_or(usize::MAX).min(data.len());
    let end = start.saturating_add(8).saturating_add(length as usize).min(data.len());
    data[start..end]
        .chunks(16)
        .enumerate()
        .map(|(i, c)| {
            let hex: Vec<String> = c.iter().map(|b| format!("{b:02x}")).collect();
            let ascii: String = c.iter().map(|b| if b.is_ascii_graphic() { *b as char } else { '.' }).collect();
            format!("    {:04x}: {:<47}  {ascii}", start + i * 16, hex.join(" "))
        })
        .collect()
}
