// Also the body of `overlay-upgrade-variant` (src/bin/upgrade_variant.rs
// includes this file), so no inner attributes or `//!` docs here.
use std::{process::ExitCode, time::Duration};

use anyhow::Result;
use clap::Parser as _;
use overlay_userspace::{
    agent::{self, AgentOptions},
    cli::{
        args::{Cli, Command},
        commands, tables,
    },
    gossip::key::ClusterKey,
};

fn main() -> ExitCode {
    env_logger::Builder::from_env(
        env_logger::Env::default()
            .default_filter_or("info,netlink_packet_route=error,chitchat=warn"),
    )
    .format_timestamp_millis()
    .init();
    match try_main(&Cli::parse()) {
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
        other => {
            let (table, args) = other.table().expect("every other command shows a table");
            let dir = tables::resolve_pin_dir(args.node.as_deref(), args.pin_dir.clone())?;
            tables::render(table, &dir, args.json)?
        }
    };
    print!("{text}");
    Ok(())
}
