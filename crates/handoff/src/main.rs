//! The `handoff` binary: `serve` runs the server; `agent`, `ivr` and `admin` are clients;
//! `bench` runs the separate `handoff-bench` executable.

mod bench;
mod cli_admin;
mod cli_agent;
mod cli_ivr;
mod cluster_node;
mod config;
mod demo;
mod local_server;
mod serve;

use std::collections::HashMap;
use std::ffi::OsString;
use std::path::PathBuf;

use clap::{Parser, Subcommand};

/// mimalloc instead of glibc's malloc: at 1,000 interactions a second glibc's allocator took
/// about a quarter of the server's CPU (its `malloc_consolidate` and `unlink_chunk` also in
/// the tail of a pop), measured in docs/benchmarks.md.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Takes this process (and the server a bench starts) out of transparent huge pages. mimalloc
/// asks for them, and the kernel then zeroes a whole 2 MiB page inside the first allocation
/// that touches it: a stall of the thread that allocated, which may be the engine every
/// request waits on. Without them, at 1,000 interactions a second (`os`), the pops' p99.9 went
/// from 17-23 ms to 10-13 ms, for about 5% more CPU (docs/benchmarks.md). A refusal (an old
/// kernel) leaves things as they were, so it is not an error.
fn turn_off_transparent_huge_pages() {
    #[cfg(target_os = "linux")]
    // SAFETY: PR_SET_THP_DISABLE takes integers only and touches no memory of ours.
    unsafe {
        libc::prctl(libc::PR_SET_THP_DISABLE, 1, 0, 0, 0);
    }
}

#[derive(Parser)]
#[command(
    name = "handoff",
    version,
    about = "Hands a caller from an IVR to an agent, with a screen pop that is never lost"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the server (SQLite in the data directory by default).
    Serve(ServeArgs),
    /// A terminal agent desktop: prints screen pops and can accept them.
    Agent(cli_agent::AgentArgs),
    /// Hand off one call, as an IVR would.
    Ivr(cli_ivr::IvrArgs),
    /// Manage agents, presence and keys.
    Admin(cli_admin::AdminArgs),
    /// Open-loop benchmark: agents over WebSocket, IVR posts at a fixed rate, pop latency,
    /// memory and CPU, and optional NATS, JetStream and Redis baselines.
    // Its flags, `--help` included, belong to handoff-bench, which gets them all as they are.
    #[command(disable_help_flag = true)]
    Bench {
        /// handoff-bench's arguments (`handoff bench --help` lists them).
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<OsString>,
    },
    /// A throwaway server with simulated agents and IVR calls, and two agents for you to play.
    Demo(demo::DemoArgs),
}

#[derive(clap::Args)]
struct ServeArgs {
    /// A TOML configuration file.
    #[arg(long)]
    config: Option<PathBuf>,
    /// Where the store lives (overrides `data_dir`).
    #[arg(long)]
    data_dir: Option<PathBuf>,
    /// Address to listen on (overrides `listen`).
    #[arg(long)]
    listen: Option<String>,
}

fn main() -> std::process::ExitCode {
    turn_off_transparent_huge_pages();
    let cli = Cli::parse();
    let env: HashMap<String, String> = std::env::vars()
        .filter(|(key, _)| key.starts_with("HANDOFF_"))
        .collect();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("error: cannot start the runtime: {error}");
            return std::process::ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async move {
        match cli.command {
            Command::Serve(args) => {
                let overrides = config::Overrides {
                    data_dir: args.data_dir,
                    listen: args.listen,
                };
                let config = config::Config::load(args.config.as_deref(), &env, &overrides)?;
                init_logging(&config.log);
                serve::run(config, &env).await
            }
            Command::Agent(args) => cli_agent::run(args).await,
            Command::Ivr(args) => cli_ivr::run(args).await,
            Command::Admin(args) => cli_admin::run(args).await,
            // Returns only if handoff-bench could not be run.
            Command::Bench { args } => bench::run(args).map(|never| match never {}),
            Command::Demo(args) => {
                // The server's own logs would drown the demo's narration: warnings only.
                init_logging("warn");
                demo::run(args).await
            }
        }
    });
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("error: {error:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

fn init_logging(filter: &str) {
    let filter = std::env::var("RUST_LOG").unwrap_or_else(|_| filter.to_owned());
    let filter = tracing_subscriber::EnvFilter::try_new(&filter)
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .init();
}
