//! Screen hashing: the node agent reports a short hash of the last lines of a pane instead of the
//! text itself, so raw screens stay on the host.

/// Default number of bottom lines that are hashed and classified.
pub const DEFAULT_LINES: usize = 30;

/// The last `rows` rows of a capture, blank rows included: the screen as it is now when `rows`
/// is the pane's height (a capture with history holds the rows above it). `rows` 0 (unknown)
/// keeps the whole capture.
pub fn visible(capture: &str, rows: usize) -> &str {
    if rows == 0 {
        return capture;
    }
    let body = capture.strip_suffix('\n').unwrap_or(capture);
    match body.rmatch_indices('\n').nth(rows - 1) {
        Some((i, _)) => &capture[i + 1..],
        None => capture,
    }
}

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
    fn visible_is_the_last_rows_blank_ones_included() {
        // History (a limit message a clear pushed off), then a 4-row screen.
        let capture = "limit reached\nold\nb1\nb2\n\n\n";
        assert_eq!(visible(capture, 4), "b1\nb2\n\n\n");
        assert_eq!(visible(capture, 10), capture);
        assert_eq!(visible(capture, 0), capture);
    }

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
