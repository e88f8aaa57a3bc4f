//! The relay's TLS to the gateway (`wss://`, `https://`): the real
//! `ccr-relay` binary and curl against the development gateway, which logs
//! each handshake's version. The relay offers TLS 1.3 and gets it from a
//! gateway that offers it; a gateway that stops at TLS 1.2 (the bench's
//! old rows) still works, on TLS 1.2.

use ccr_integration::relay::{BlindPki, RelayOptions, RelayProcess, curl_via};
use ccr_integration::{DevGateway, ServerKind};

/// A `wss://` late-v2 gateway with `more` arguments, a relay trusting it,
/// and one curl through a tunnel; returns the gateway's `tls …` events.
fn tunnel_over_tls(more: &[&str]) -> Vec<String> {
    let pki = BlindPki::new();
    let origin = pki.https_origin(&["origin.test"]);
    let gw = DevGateway::start(
        pki.gateway_options(true)
            .agent_proxy(ServerKind::Late)
            .map("origin.test:443", origin.addr)
            .args(more),
    );
    let relay = RelayProcess::serve(
        &gw,
        RelayOptions::default()
            .agent_proxy()
            .gateway_ca(&pki.gateway_tls_ca_pem()),
    );
    let out = curl_via(
        &relay.proxy_url,
        &pki.served_ca_pem(),
        "https://origin.test/hello",
        &["-H", "Connection: close"],
    );
    assert!(
        out.status.success() && out.stdout_text() == "hello from origin\n",
        "curl failed: {:?}\nrelay log:\n{}\ngateway events:\n{}",
        out.stderr,
        relay.stderr(),
        gw.events().join("\n")
    );
    assert_eq!(gw.count_events("connect origin.test:443"), 1);
    let tls: Vec<String> = gw
        .events()
        .into_iter()
        .filter(|e| e.starts_with("tls "))
        .collect();
    // The CA fetch, the probe and the tunnel's WebSocket at least.
    assert!(tls.len() >= 2, "{tls:?}");
    tls
}

#[test]
fn a_wss_tunnel_negotiates_tls_1_3() {
    let tls = tunnel_over_tls(&[]);
    assert!(
        tls.iter().all(|e| e.starts_with("tls version=TLSv1.3 ")),
        "{tls:?}"
    );
}

#[test]
fn a_gateway_offering_only_tls_1_2_still_works() {
    let tls = tunnel_over_tls(&["--tls-max", "1.2"]);
    assert!(
        tls.iter().all(|e| e.starts_with("tls version=TLSv1.2 ")),
        "{tls:?}"
    );
}
