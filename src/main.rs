//! `ccr-relay`: parses nothing itself; the library's `app` module parses
//! the arguments and runs the command, and its status is the exit status.

fn main() {
    let code = ccr_relay::cli::commands::main(std::env::args_os().skip(1).collect());
    std::process::exit(code);
}
