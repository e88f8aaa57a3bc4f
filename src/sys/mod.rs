//! What the operating system gives: socket modes, signals, atomic files,
//! bounded helper commands, the heap, poison-proof locks, the private state
//! directory, and outside text made safe to show.

pub mod atomic_file;
pub mod command;
pub mod heap;
pub mod lock;
pub mod signals;
pub mod socket;
pub mod state_dir;
pub mod text;
