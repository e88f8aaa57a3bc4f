//! `ccr-dev-gateway`: a development stand-in for the CCR upstream-proxy
//! gateway; see `ccr_integration::gateway`.

use std::process::ExitCode;

use ccr_integration::gateway::{Gateway, GatewayConfig, USAGE};

fn main() -> ExitCode {
    let cfg = match GatewayConfig::from_args(std::env::args_os().skip(1)) {
        Ok(Some(cfg)) => cfg,
        Ok(None) => {
            print!("{USAGE}");
            return ExitCode::SUCCESS;
        }
        Err(e) => {
            eprintln!("ccr-dev-gateway: {e}\n\n{USAGE}");
            return ExitCode::from(2);
        }
    };
    ccr_integration::init_logging();
    let gateway = match Gateway::bind(cfg) {
        Ok(g) => g,
        Err(e) => {
            eprintln!("ccr-dev-gateway: {e}");
            return ExitCode::FAILURE;
        }
    };
    let served = gateway
        .local_addr()
        .and_then(ccr_integration::announce)
        .and_then(|_| gateway.serve());
    match served {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("ccr-dev-gateway: {e}");
            ExitCode::FAILURE
        }
    }
}
