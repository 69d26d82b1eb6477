//! Screen hashing: the node agent reports a short hash of the last lines of a pane instead of the
//! text itself, so raw screens stay on the host.

/// Default number of bottom lines that are hashed and classified.
pub const DEFAULT_LINES: usize = 30;

/// The last `n` lines of `screen`, with trailing blank lines (tmux pads panes with them) dropped
/// first so that the same content hashes the same whatever the pane height.
pub fn last_lines(screen: &str, n: usize) -> &str {
    let trimmed = screen.trim_end_matches(['\n', ' ']);
    let mut start = trimmed.len();
    let mut seen = 0;
    for (i, b) in trimmed.bytes().enumerate().rev() {
        if b == b'\n' {
            seen += 1;
            if seen == n {
                break;
            }
        }
        start = i;
    }
    if seen < n {
        start = 0;
    }
    &trimmed[start..]
}

/// blake3 of the text, as 16 hex characters (64 bits: plenty to notice a change).
pub fn hash(text: &str) -> String {
    let h = blake3::hash(text.as_bytes());
    h.to_hex()[..16].to_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn last_lines_drops_padding_and_keeps_n() {
        let s = "a\nb\nc\nd\n\n\n";
        assert_eq!(last_lines(s, 2), "c\nd");
        assert_eq!(last_lines(s, 10), "a\nb\nc\nd");
        assert_eq!(last_lines("", 3), "");
    }

    #[test]
    fn hash_changes_with_content() {
        assert_eq!(hash("x"), hash("x"));
        assert_ne!(hash("x"), hash("y"));
        assert_eq!(hash("x").len(), 16);
    }
}
