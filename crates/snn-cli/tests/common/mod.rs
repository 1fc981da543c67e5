//! Helpers shared by the command-line tests.

#![allow(dead_code)] // each test binary uses its own subset

use std::process::{Command, Output};

/// Runs the `snn-cli` binary with `args`, isolated from any Hub cache or Hub settings of the machine.
pub fn cli(args: &[&str]) -> Output {
    cli_env(args, &[])
}

/// Like [`cli`], with extra environment variables.
pub fn cli_env(args: &[&str], env: &[(&str, &str)]) -> Output {
    let isolated_home = std::env::temp_dir().join("snn-cli-tests-no-hf-home");
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_snn-cli"));
    cmd.args(args).env("HF_HOME", isolated_home).env_remove("HF_ENDPOINT").env_remove("HF_HUB_OFFLINE");
    cmd.envs(env.iter().copied()).output().expect("run snn-cli")
}

/// The standard error of a run, as text.
pub fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}
