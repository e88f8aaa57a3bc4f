//! `make run`: ccr-relay end to end on this machine alone (see
//! `ccr_integration::demo`).

fn main() {
    let code = ccr_integration::demo::main(std::env::args().skip(1).collect());
    std::process::exit(code);
}
