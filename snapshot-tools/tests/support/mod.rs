//! Running the built `xenstore-inspect` binary, shared by the CLI tests.

use std::process::{Command, Output};

pub const BIN: &str = env!("CARGO_BIN_EXE_xenstore-inspect");

pub fn run(args: &[&str]) -> Output {
    Command::new(BIN).args(args).output().expect("run xenstore-inspect")
}

pub fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

pub fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

pub fn json(o: &Output) -> serde_json::Value {
    serde_json::from_slice(&o.stdout).unwrap_or_else(|e| panic!("bad JSON ({e}): {}", stdout(o)))
}
