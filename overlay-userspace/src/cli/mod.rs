//! The `overlay` command line: its arguments ([`args`]), the commands that ask
//! the agent ([`commands`]), the tables read straight from the pinned maps
//! ([`tables`]), and the monitor's and trace's streams ([`monitor`]).

pub mod args;
pub mod commands;
pub mod monitor;
pub mod tables;
