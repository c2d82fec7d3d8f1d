use std::{process::ExitCode, time::Duration};

use clap::Parser as _;
use overlay_userspace::{
    agent,
    cli::{Cli, Command},
    show,
};

fn main() -> ExitCode {
    env_logger::Builder::from_env(
        env_logger::Env::default().default_filter_or("info,netlink_packet_route=error"),
    )
    .format_timestamp_millis()
    .init();
    let cli = Cli::parse();
    let result = match &cli.command {
        Command::Agent {
            config,
            pin_dir,
            reconcile_interval,
        } => tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(anyhow::Error::from)
            .and_then(|rt| {
                rt.block_on(agent::run(
                    config.clone(),
                    pin_dir.clone(),
                    Duration::from_secs(*reconcile_interval),
                ))
            }),
        other => {
            let (table, args) = other.table().expect("every other command shows a table");
            show::resolve_pin_dir(args.node.as_deref(), args.pin_dir.clone())
                .and_then(|dir| show::render(table, &dir, args.json))
                .map(|text| print!("{text}"))
        }
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("overlay: {e:#}");
            ExitCode::FAILURE
        }
    }
}
