//! A small hand-rolled command-line reader shared by the development
//! binaries: `--flag VALUE` or `--flag=VALUE`, clear errors, no crate.

use std::ffi::OsString;
use std::fmt;
use std::net::SocketAddr;
use std::str::FromStr;

/// A command-line mistake, shown to the user with the usage text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UsageError(pub String);

impl fmt::Display for UsageError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for UsageError {}

/// Walks arguments one flag at a time.
pub struct Args {
    args: std::iter::Peekable<std::vec::IntoIter<String>>,
    /// A value given inline with `--flag=value`, waiting to be taken.
    inline: Option<String>,
    current: String,
}

impl Args {
    /// Arguments without the program name. Non-UTF-8 arguments are an error.
    pub fn new(args: impl IntoIterator<Item = OsString>) -> Result<Args, UsageError> {
        let args = args
            .into_iter()
            .map(|a| {
                a.into_string()
                    .map_err(|a| UsageError(format!("argument {a:?} is not UTF-8")))
            })
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Args {
            args: args.into_iter().peekable(),
            inline: None,
            current: String::new(),
        })
    }

    /// The next flag (e.g. `--listen`), or `None` at the end.
    pub fn next_flag(&mut self) -> Result<Option<String>, UsageError> {
        if let Some(v) = self.inline.take() {
            return Err(UsageError(format!(
                "{} takes no value (got {v:?})",
                self.current
            )));
        }
        let Some(arg) = self.args.next() else {
            return Ok(None);
        };
        if !arg.starts_with("--") {
            return Err(UsageError(format!("unexpected argument {arg:?}")));
        }
        match arg.split_once('=') {
            Some((flag, value)) => {
                self.current = flag.to_string();
                self.inline = Some(value.to_string());
            }
            None => self.current = arg,
        }
        Ok(Some(self.current.clone()))
    }

    /// The value of the current flag.
    pub fn value(&mut self) -> Result<String, UsageError> {
        if let Some(v) = self.inline.take() {
            return Ok(v);
        }
        match self.args.next_if(|v| !v.starts_with("--")) {
            Some(v) => Ok(v),
            None => Err(UsageError(format!("{} needs a value", self.current))),
        }
    }

    /// The value of the current flag, parsed.
    pub fn parsed<T: FromStr>(&mut self, what: &str) -> Result<T, UsageError> {
        let v = self.value()?;
        v.parse()
            .map_err(|_| UsageError(format!("{}: {v:?} is not {what}", self.current)))
    }

    /// A listen address: `IP:PORT`, or a bare port meaning `127.0.0.1:PORT`.
    pub fn listen_addr(&mut self) -> Result<SocketAddr, UsageError> {
        let v = self.value()?;
        if let Ok(port) = v.parse::<u16>() {
            return Ok(SocketAddr::from(([127, 0, 0, 1], port)));
        }
        v.parse().map_err(|_| {
            UsageError(format!(
                "{}: {v:?} is not IP:PORT (e.g. 127.0.0.1:0)",
                self.current
            ))
        })
    }

    /// An error about the current flag.
    pub fn unknown(&self) -> UsageError {
        UsageError(format!("unknown option {}", self.current))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(list: &[&str]) -> Args {
        Args::new(list.iter().map(OsString::from)).unwrap()
    }

    #[test]
    fn flags_values_and_errors() {
        let mut a = args(&["--listen", "127.0.0.1:5", "--token=t", "--x", "--y"]);
        assert_eq!(a.next_flag().unwrap().as_deref(), Some("--listen"));
        assert_eq!(a.listen_addr().unwrap().port(), 5);
        assert_eq!(a.next_flag().unwrap().as_deref(), Some("--token"));
        assert_eq!(a.value().unwrap(), "t");
        assert_eq!(a.next_flag().unwrap().as_deref(), Some("--x"));
        assert_eq!(a.value().unwrap_err().0, "--x needs a value");
        assert_eq!(a.next_flag().unwrap().as_deref(), Some("--y"));
        assert_eq!(a.next_flag().unwrap(), None);

        let mut a = args(&["--stall=1"]);
        a.next_flag().unwrap();
        assert!(a.next_flag().unwrap_err().0.contains("takes no value"));
        assert!(args(&["stray"]).next_flag().is_err());
    }
}
