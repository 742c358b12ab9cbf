//! Everything the inspector does with a file, run on arbitrary bytes: the
//! body of the cargo-fuzz target (`fuzz/`) and of the test that replays its
//! corpus (`tests/fuzz_corpus.rs`), so that both check the same thing.

use crate::cver::{self, CVersion};
use crate::{WriteFormat, oxenstored, read_stream, report, write_stream};

/// Reads `data` as a stream and as an oxenstored dump and builds every
/// report from the result. Must never panic; panics (with a message) only
/// if a stream it wrote itself does not read back.
pub fn exercise(data: &[u8]) {
    if let Ok(p) = read_stream(data) {
        let _ = report::header_line(&p);
        for r in report::record_lines(&p) {
            let _ = r.text();
        }
        let s = report::summarize("fuzz", &p);
        let _ = s.text(report::Style { colour: false });
        let tree = report::Tree::build(&p.snapshot);
        for e in tree.list(b"/") {
            let _ = e.text();
        }
        for v in [CVersion::V417, CVersion::V421, CVersion::V422] {
            let _ = cver::check(&p, v);
        }
        let _ = report::diff(&p.snapshot, &p.snapshot);
        // Writing may refuse (a WriteError), never panic; what it writes
        // must read back.
        if let Ok(bytes) = write_stream(&p.snapshot, WriteFormat::detect(&p.snapshot)) {
            assert!(read_stream(&bytes).is_ok(), "written stream does not read back");
        }
    }
    if let Ok(p) = oxenstored::read_dump(data) {
        let _ = report::summarize("fuzz", &p);
    }
}
