//! `polypi train` / `polypi search`: thin forwarders to the `polypi-train` binary (burn-based
//! training and architecture search live in the polypi-train crate, so that this tool does not
//! depend on burn). The binary is looked up next to the running `polypi` executable.

use anyhow::{bail, Context, Result};
use clap::Args;
use std::ffi::OsString;
use std::path::PathBuf;
use std::process::{Command, ExitCode};

/// Arguments handed unchanged to `polypi-train` (see `polypi-train --help`,
/// `polypi-train search --help`).
#[derive(Args, Debug)]
#[command(disable_help_flag = true)]
pub struct ForwardArgs {
    /// Arguments for polypi-train.
    #[arg(trailing_var_arg = true, allow_hyphen_values = true, num_args = 0..)]
    pub args: Vec<OsString>,
}

/// Path of `polypi-train` next to the current executable.
///
/// # Errors
/// The current executable's path is unknown, or no `polypi-train` is there (with the command
/// that builds it).
pub fn train_binary() -> Result<PathBuf> {
    let exe = std::env::current_exe().context("cannot locate the polypi executable")?;
    let dir = exe.parent().context("the polypi executable has no parent folder")?;
    let bin = dir.join(format!("polypi-train{}", std::env::consts::EXE_SUFFIX));
    if !bin.is_file() {
        bail!(
            "polypi-train not found at {} (training and search live in the polypi-train binary); \
             build it with `cargo build --release -p polypi-train`",
            bin.display()
        );
    }
    Ok(bin)
}

/// Runs `polypi-train [subcommand] ARGS...` and returns its exit status.
///
/// # Errors
/// The binary is missing or cannot be started.
pub fn run(subcommand: Option<&str>, a: ForwardArgs) -> Result<ExitCode> {
    let bin = train_binary()?;
    let mut cmd = Command::new(&bin);
    if let Some(s) = subcommand {
        cmd.arg(s);
    }
    cmd.args(&a.args);
    let status = cmd.status().with_context(|| format!("cannot start {}", bin.display()))?;
    Ok(match status.code() {
        Some(0) => ExitCode::SUCCESS,
        Some(c) => ExitCode::from(u8::try_from(c).unwrap_or(1)),
        None => ExitCode::from(1),
    })
}
