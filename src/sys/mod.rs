//! What the operating system gives: socket modes, signals, atomic files,
//! bounded helper commands, and the heap.

pub mod atomic_file;
pub mod command;
pub mod heap;
pub mod lock;
pub mod signals;
pub mod socket;
pub mod state_dir;
