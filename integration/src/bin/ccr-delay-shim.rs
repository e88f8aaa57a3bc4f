//! `ccr-delay-shim`: a TCP forwarder that delays every byte; see
//! `ccr_integration::delay`.

use std::process::ExitCode;

use ccr_integration::delay::{DelayConfig, DelayShim, USAGE};

fn main() -> ExitCode {
    let cfg = match DelayConfig::from_args(std::env::args_os().skip(1)) {
        Ok(Some(cfg)) => cfg,
        Ok(None) => {
            print!("{USAGE}");
            return ExitCode::SUCCESS;
        }
        Err(e) => {
            eprintln!("ccr-delay-shim: {e}\n\n{USAGE}");
            return ExitCode::from(2);
        }
    };
    ccr_integration::init_logging();
    let served = DelayShim::bind(cfg).and_then(|shim| {
        shim.local_addr()
            .and_then(ccr_integration::announce)
            .and_then(|_| shim.serve())
    });
    match served {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("ccr-delay-shim: {e}");
            ExitCode::FAILURE
        }
    }
}
