//! `ccr-relay`: parses nothing itself; see the library's `app` module.

fn main() {
    let code = ccr_relay::app::main(std::env::args_os().skip(1).collect());
    std::process::exit(code);
}
