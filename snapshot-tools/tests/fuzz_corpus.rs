//! Replays the fuzzer's corpus (`fuzz/corpus/read_stream`, kept in the
//! repository) through the same checks as the fuzz target, so that what
//! the fuzzer once explored stays panic-free without cargo-fuzz.

use std::fs;
use std::path::Path;

#[test]
fn corpus_replays_without_panics() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/corpus/read_stream");
    let mut files: Vec<_> = fs::read_dir(&dir).expect("corpus directory").map(|e| e.expect("entry").path()).collect();
    files.sort();
    assert!(files.len() > 100, "corpus at {} looks lost: {} files", dir.display(), files.len());
    for f in &files {
        let data = fs::read(f).expect("corpus file");
        let name = f.display().to_string();
        let outcome = std::panic::catch_unwind(|| snapshot_tools::exercise::exercise(&data));
        assert!(outcome.is_ok(), "{name} panics");
    }
}
