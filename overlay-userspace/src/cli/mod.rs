//! The `overlay` command line: its arguments ([`args`]), the commands that ask
//! the agent ([`commands`]), and the tables read straight from the pinned maps
//! ([`tables`]).

pub mod args;
pub mod commands;
pub mod tables;
