//! Test support for the tests that run the `herald` binary: everything in the library's
//! `tests/support` (servers, clients, Redis), plus the path of the binary, which cargo gives
//! only to the tests of the package that builds it (this one).
#![allow(dead_code)]

#[path = "../../../tests/support/mod.rs"]
mod shared;

pub use shared::*;

/// A command for the `herald` binary built with these tests.
pub fn herald() -> std::process::Command {
    std::process::Command::new(env!("CARGO_BIN_EXE_herald"))
}
