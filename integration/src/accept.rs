//! The accept loop the development gateway, the test origin and the delay
//! shim share: one thread per connection, for ever, and an accept failure
//! (out of descriptors and the like) backs off and goes on serving.

use std::io;
use std::net::{TcpListener, TcpStream};
use std::thread;
use std::time::Duration;

/// How long to wait after a failed accept before the next one.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(50);

/// Accepts on `listener` for ever. For each connection `conn` returns the
/// name of its thread and the work to run there, with `stack` bytes of
/// stack; a thread that cannot be started is logged and its connection
/// dropped.
pub fn serve_each<F>(
    listener: &TcpListener,
    stack: usize,
    mut conn: impl FnMut(TcpStream) -> (String, F),
) -> io::Result<()>
where
    F: FnOnce() + Send + 'static,
{
    for stream in listener.incoming() {
        let stream = match stream {
            Ok(s) => s,
            Err(e) => {
                log::warn!("accept failed: {e}");
                thread::sleep(ACCEPT_BACKOFF);
                continue;
            }
        };
        let (name, work) = conn(stream);
        if let Err(e) = thread::Builder::new()
            .name(name)
            .stack_size(stack)
            .spawn(work)
        {
            log::warn!("cannot start a connection thread: {e}");
        }
    }
    Ok(())
}
