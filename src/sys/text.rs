//! Text from outside (a client's host, a gateway's status line, a process
//! name) made safe for a log line, an answer body, the status page or a
//! header: characters that could break a line or pose as something else
//! are replaced or dropped, and the length is bounded. One place, so every
//! caller keeps the same promise.

/// Which characters a caller keeps as they are.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Keep {
    /// Everything but control characters (`char::is_control`: C0, DEL, C1).
    NonControl,
    /// Printable ASCII and the space only: what a header value may carry.
    PrintableAscii,
}

impl Keep {
    fn keeps(self, c: char) -> bool {
        match self {
            Keep::NonControl => !c.is_control(),
            Keep::PrintableAscii => c.is_ascii_graphic() || c == ' ',
        }
    }
}

/// What becomes of a character that is not kept.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Unfit {
    /// Replaced by this character, so the reader sees something was there.
    Replace(char),
    /// Left out.
    Drop,
}

/// Control characters become `?`; at most `max_chars` characters.
///
/// ```
/// assert_eq!(ccr_relay::sys::text::sanitize("a\r\nb\u{7f}c", 4), "a??b");
/// ```
pub fn sanitize(text: &str, max_chars: usize) -> String {
    clean(text, max_chars, Keep::NonControl, Unfit::Replace('?'))
}

/// `text` with the characters `keep` does not keep replaced or dropped as
/// `unfit` says, at most `max_chars` characters of the result.
pub fn clean(text: &str, max_chars: usize, keep: Keep, unfit: Unfit) -> String {
    text.chars()
        .filter_map(|c| match unfit {
            _ if keep.keeps(c) => Some(c),
            Unfit::Replace(with) => Some(with),
            Unfit::Drop => None,
        })
        .take(max_chars)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn control_characters_are_replaced_and_length_bounded() {
        assert_eq!(
            sanitize("ok\r\nX-Evil: 1\u{0}\u{85}", 100),
            "ok??X-Evil: 1??"
        );
        assert_eq!(sanitize("évil\tname", 6), "évil?n");
        assert_eq!(sanitize("abc", 0), "");
        assert_eq!(sanitize("abc", usize::MAX), "abc");
    }

    #[test]
    fn dropping_counts_only_what_is_kept() {
        let drop = |text, max| clean(text, max, Keep::NonControl, Unfit::Drop);
        assert_eq!(drop("a\r\nb\u{1b}[31mc", 5), "ab[31");
        assert_eq!(drop("\n\n\nabc", 2), "ab");
    }

    #[test]
    fn printable_ascii_keeps_the_space_and_nothing_beyond_ascii() {
        let ascii = |text, max| clean(text, max, Keep::PrintableAscii, Unfit::Drop);
        assert_eq!(ascii("node ré\r\nX: 1\u{7f}", 64), "node rX: 1");
        assert_eq!(ascii(&"x".repeat(100), 64).len(), 64);
        let marked = clean(
            "a\u{e9}\u{1}b",
            10,
            Keep::PrintableAscii,
            Unfit::Replace('.'),
        );
        assert_eq!(marked, "a..b");
    }
}
