//! The tolerant reader and everything the inspector does with its result
//! must never panic, whatever the bytes (see `snapshot_tools::exercise`).
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| snapshot_tools::exercise::exercise(data));
