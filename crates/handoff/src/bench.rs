//! `handoff bench`: runs the `handoff-bench` executable with the same arguments.
//!
//! The bench is a crate of its own (crates/handoff-bench) so that the server links none of what
//! only the bench uses (a Redis client, HDR histograms, progress bars). This keeps the command
//! people know: it runs `HANDOFF_BENCH_BIN`, else `handoff-bench` next to this executable (cargo
//! builds both into the same directory), with `HANDOFF_SERVER_BIN` set to this executable, so
//! that the bench measures the server it was run from.

use std::convert::Infallible;
use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context};

/// Runs handoff-bench with `args`; returns only when it cannot. On Unix it takes this process's
/// place (exec), so its exit code, its signals (Ctrl-C, which stops it cleanly) and its pid,
/// which a script may `kill`, are the bench's own; elsewhere it waits and exits with its code.
pub fn run(args: Vec<OsString>) -> anyhow::Result<Infallible> {
    let own = std::env::current_exe().context("cannot find this executable's path")?;
    let bench = bench_binary(std::env::var_os("HANDOFF_BENCH_BIN"), &own)?;
    let mut command = Command::new(&bench);
    command.args(&args).env("HANDOFF_SERVER_BIN", &own);
    #[cfg(unix)]
    {
        use std::os::unix::process::CommandExt;
        // The bench's usage lines then say `handoff bench`, as they did when it was a
        // subcommand: clap names the program after its argv[0].
        command.arg0(usage_name());
        let error = command.exec();
        Err(error).with_context(|| format!("cannot run {}", bench.display()))
    }
    #[cfg(not(unix))]
    {
        let status = command
            .status()
            .with_context(|| format!("cannot run {}", bench.display()))?;
        std::process::exit(status.code().unwrap_or(1));
    }
}

/// `HANDOFF_BENCH_BIN` when set, else `handoff-bench` beside `own`; an error naming what to build
/// when it is not there.
fn bench_binary(named: Option<OsString>, own: &Path) -> anyhow::Result<PathBuf> {
    if let Some(path) = named.filter(|path| !path.is_empty()).map(PathBuf::from) {
        if !path.is_file() {
            bail!(
                "HANDOFF_BENCH_BIN names {}, which does not exist: `handoff bench` runs the \
                 handoff-bench executable; build it with `cargo build --release -p handoff-bench`",
                path.display()
            );
        }
        return Ok(path);
    }
    let dir = own
        .parent()
        .with_context(|| format!("{} has no directory", own.display()))?;
    let path = dir.join(format!("handoff-bench{}", std::env::consts::EXE_SUFFIX));
    if !path.is_file() {
        bail!(
            "no handoff-bench next to this executable ({}): `handoff bench` runs it; build it \
             with `cargo build --release -p handoff-bench` (cargo puts it next to handoff), or \
             set HANDOFF_BENCH_BIN to its path",
            path.display()
        );
    }
    Ok(path)
}

/// `handoff bench`, after the name this program was run by.
#[cfg(unix)]
fn usage_name() -> OsString {
    let mut name = std::env::args_os()
        .next()
        .as_deref()
        .map(Path::new)
        .and_then(Path::file_name)
        .map_or_else(|| OsString::from("handoff"), OsString::from);
    name.push(" bench");
    name
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_bench_is_the_one_named_else_handoff_bench_beside_this_executable() {
        let temp = tempfile::tempdir().unwrap();
        let dir = temp.path();
        let own = dir.join("handoff");
        let beside = dir.join(format!("handoff-bench{}", std::env::consts::EXE_SUFFIX));
        let error = bench_binary(None, &own).unwrap_err().to_string();
        assert!(
            error.contains("cargo build --release -p handoff-bench"),
            "{error}"
        );
        let error = bench_binary(Some(dir.join("nowhere").into()), &own)
            .unwrap_err()
            .to_string();
        assert!(error.contains("nowhere"), "{error}");
        std::fs::write(&beside, "").unwrap();
        assert_eq!(bench_binary(None, &own).unwrap(), beside);
        assert_eq!(bench_binary(Some("".into()), &own).unwrap(), beside);
        assert_eq!(
            bench_binary(Some(beside.clone().into()), &own).unwrap(),
            beside
        );
    }
}
