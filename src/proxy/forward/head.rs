//! Reading one response head from the far side of a link (the gateway
//! answering a CONNECT, or an origin): the bytes to pass on and their
//! parse, with failures that name the party at fault (504 when a deadline
//! passes, 502 otherwise).

use std::io::BufRead;

use super::Failure;
use crate::http::http1::{ResponseHead, parse_response_head};
use crate::http::reply;
use crate::http::request_head::{HeadError, read_head_bytes};

/// Largest response head accepted from an origin.
const MAX_RESPONSE_HEAD: usize = 64 * 1024;

/// Reads and parses one response head from `stream` (`who` names the
/// sender in errors): the head's bytes, to pass on verbatim, and its parse.
/// A deadline passing is a 504, anything else a 502.
pub(super) fn read_response<R: BufRead>(
    stream: &mut R,
    who: &str,
) -> Result<(Vec<u8>, ResponseHead), Failure> {
    let bytes = read_head_bytes(stream, MAX_RESPONSE_HEAD).map_err(|e| head_failure(who, &e))?;
    match parse_response_head(&bytes) {
        Ok(Some((resp, _))) => Ok((bytes, resp)),
        Ok(None) => Err(Failure::Answer(
            reply::BAD_GATEWAY,
            format!("{who} sent a bad response head: it is cut off"),
        )),
        Err(e) => Err(Failure::Answer(
            reply::BAD_GATEWAY,
            format!("{who} sent a bad response head: {e}"),
        )),
    }
}

/// What a failed read of a response head means, naming the party at fault
/// (the request-head wording of [`HeadError`] would blame the client).
fn head_failure(who: &str, e: &HeadError) -> Failure {
    let why = match e {
        HeadError::Timeout => {
            return Failure::Answer(
                reply::GATEWAY_TIMEOUT,
                format!("{who} sent no complete response head in time"),
            );
        }
        HeadError::TooLarge => {
            format!("{who} sent a response head over {MAX_RESPONSE_HEAD} bytes")
        }
        HeadError::Closed(None) => {
            format!("{who} closed before its response head was complete")
        }
        HeadError::Closed(Some(e)) => {
            let what = format!("reading the response head from {who} failed");
            return Failure::from_read(e, &what, |why| Failure::Answer(reply::BAD_GATEWAY, why));
        }
        other => format!("{who} sent a bad response head: {other}"),
    };
    Failure::Answer(reply::BAD_GATEWAY, why)
}

#[cfg(test)]
mod tests {
    use std::io::{self, Read};

    use super::*;

    fn response_failure(input: &[u8]) -> (u16, String) {
        match read_response(&mut io::BufReader::new(input), "the origin o.test:80") {
            Err(Failure::Answer((code, _), why)) => (code, why),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn response_head_failures_name_the_origin() {
        let mut big = b"HTTP/1.1 200 OK\r\n".to_vec();
        while big.len() < 200 * 1024 {
            big.extend_from_slice(b"X-Filler: 0123456789abcdef0123456789abcdef\r\n");
        }
        big.extend_from_slice(b"\r\n");
        let (code, why) = response_failure(&big);
        assert_eq!(code, 502);
        assert!(why.contains("response head over 65536 bytes"), "{why}");
        assert!(!why.contains("request"), "{why}");

        let (code, why) = response_failure(b"HTTP/1.1 200 OK\r\nContent-Le");
        assert_eq!(code, 502);
        assert_eq!(
            why,
            "the origin o.test:80 closed before its response head was complete"
        );
        let (code, why) = response_failure(b"HTTP/1.1 200 OK\r\nBad Name: x\r\n\r\n");
        assert_eq!(code, 502);
        assert!(
            why.starts_with("the origin o.test:80 sent a bad response head: "),
            "{why}"
        );
    }

    #[test]
    fn a_silent_origin_is_a_504() {
        /// Times out on every read, as a socket past its deadline does.
        struct Silent;
        impl Read for Silent {
            fn read(&mut self, _: &mut [u8]) -> io::Result<usize> {
                Err(io::Error::new(io::ErrorKind::TimedOut, "no answer in time"))
            }
        }
        let got = read_response(&mut io::BufReader::new(Silent), "the origin o.test:80");
        match got {
            Err(Failure::Answer((504, _), why)) => assert_eq!(
                why,
                "the origin o.test:80 sent no complete response head in time"
            ),
            other => panic!("{other:?}"),
        }
    }
}
