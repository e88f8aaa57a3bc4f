//! `make bench`: ccr-relay's figures against local baselines (see
//! `ccr_integration::bench`).

fn main() {
    let code = ccr_integration::bench::main(std::env::args().skip(1).collect());
    std::process::exit(code);
}
