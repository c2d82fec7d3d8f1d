//! The cluster floor: what every node announces ([`record`]), the one view all
//! nodes compute from the records ([`resolve`]), what changed between two
//! views ([`events`]), and address allocation without a central allocator
//! ([`ipam`]).

pub mod events;
pub mod ipam;
pub mod record;
pub mod resolve;
