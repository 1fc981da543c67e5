//! Test helpers shared by several test binaries (and, by path, by other crates' tests).

pub mod hub_server;
