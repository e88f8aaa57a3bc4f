//! `ccr-dev-origin`: a tiny HTTP/1.1 test origin; see `ccr_integration::origin`.

use std::process::ExitCode;

use ccr_integration::origin::{Origin, OriginConfig, USAGE};

fn main() -> ExitCode {
    let cfg = match OriginConfig::from_args(std::env::args_os().skip(1)) {
        Ok(Some(cfg)) => cfg,
        Ok(None) => {
            print!("{USAGE}");
            return ExitCode::SUCCESS;
        }
        Err(e) => {
            eprintln!("ccr-dev-origin: {e}\n\n{USAGE}");
            return ExitCode::from(2);
        }
    };
    ccr_integration::init_logging();
    let origin = match Origin::bind(&cfg) {
        Ok(o) => o,
        Err(e) => {
            eprintln!("ccr-dev-origin: {e}");
            return ExitCode::FAILURE;
        }
    };
    let served = origin
        .local_addr()
        .and_then(ccr_integration::announce)
        .and_then(|_| origin.serve());
    match served {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("ccr-dev-origin: {e}");
            ExitCode::FAILURE
        }
    }
}
