//! Helpers shared by the command-line tests.

#![allow(dead_code)] // each test binary uses its own subset

use std::process::{Command, Output};

/// Runs the `snn-cli` binary with `args`.
pub fn cli(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_snn-cli")).args(args).output().expect("run snn-cli")
}

/// The standard error of a run, as text.
pub fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}
