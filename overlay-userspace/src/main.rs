// Also the body of `overlay-upgrade-variant` (src/bin/upgrade_variant.rs
// includes this file), so no inner attributes or `//!` docs here.
use std::{process::ExitCode, time::Duration};

use anyhow::Result;
use clap::Parser as _;
use overlay_userspace::{
    agent::{self, AgentOptions},
    cli::{
        args::{Cli, Command},
        commands, monitor, tables,
    },
    gossip::key::ClusterKey,
    logging::{self, LogFormat},
};

fn main() -> ExitCode {
    let cli = Cli::parse();
    logging::init(match &cli.command {
        Command::Agent { log_format, .. } => *log_format,
        _ => LogFormat::default(),
    });
    match try_main(&cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("overlay: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn runtime() -> Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?)
}

fn try_main(cli: &Cli) -> Result<()> {
    let text = match &cli.command {
        Command::Agent {
            config,
            pin_dir,
            socket,
            state_dir,
            reconcile_interval,
            keep,
            log_format: _,
        } => {
            return runtime()?.block_on(agent::run(AgentOptions {
                config: config.clone(),
                pin_dir: pin_dir.clone(),
                socket: socket.clone(),
                state_dir: state_dir.clone(),
                reconcile_interval: Duration::from_secs(*reconcile_interval),
                keep: *keep,
            }));
        }
        Command::Keygen { output, force } => match output {
            Some(path) => {
                ClusterKey::write_new(path, *force)?;
                format!("wrote a new cluster key to {}\n", path.display())
            }
            None => ClusterKey::generate().to_hex() + "\n",
        },
        Command::Network(c) => runtime()?.block_on(commands::network(c))?,
        Command::Endpoint(c) => runtime()?.block_on(commands::endpoint(c))?,
        Command::Members(api) => runtime()?.block_on(commands::members(api))?,
        Command::Monitor(args) => return runtime()?.block_on(monitor::monitor(args)),
        Command::Trace(args) => return runtime()?.block_on(monitor::trace(args)),
        other => {
            let (table, args) = other.table().expect("every other command shows a table");
            let dir = tables::resolve_pin_dir(args.node.as_deref(), args.pin_dir.clone())?;
            tables::render(table, &dir, args.json)?
        }
    };
    print!("{text}");
    Ok(())
}
