//! Validated identifiers: node ids and session names. Wire strings become these once, at the API
//! edge, so that the rest of the code never sees an unchecked name.

use std::fmt;

/// Why an identifier was refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum IdError {
    /// The identifier was empty.
    #[error("{what} is empty")]
    Empty { what: &'static str },
    /// The identifier was longer than allowed.
    #[error("{what} is {len} bytes long, at most {max} allowed")]
    TooLong {
        what: &'static str,
        len: usize,
        max: usize,
    },
    /// The identifier held a character that is not allowed.
    #[error("{what} {value:?} contains {ch:?}, which is not allowed")]
    BadChar {
        what: &'static str,
        value: String,
        ch: char,
    },
}

/// A node's identifier: 1 to 128 characters of `[A-Za-z0-9._-]`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct NodeId(String);

impl NodeId {
    /// Maximum length in bytes.
    pub const MAX_LEN: usize = 128;

    /// Validates `s` as a node id.
    pub fn new(s: &str) -> Result<Self, IdError> {
        const WHAT: &str = "node id";
        check_len(WHAT, s, Self::MAX_LEN)?;
        if let Some(ch) = s
            .chars()
            .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-')))
        {
            return Err(IdError::BadChar {
                what: WHAT,
                value: s.to_owned(),
                ch,
            });
        }
        Ok(Self(s.to_owned()))
    }

    /// The id as a string.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for NodeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A tmux session name: 1 to 256 bytes, no control characters, and none of the characters tmux
/// itself refuses or treats as target syntax (`:` and `.`).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SessionName(String);

impl SessionName {
    /// Maximum length in bytes.
    pub const MAX_LEN: usize = 256;

    /// Validates `s` as a session name.
    pub fn new(s: &str) -> Result<Self, IdError> {
        const WHAT: &str = "session name";
        check_len(WHAT, s, Self::MAX_LEN)?;
        if let Some(ch) = s.chars().find(|c| c.is_control() || matches!(c, ':' | '.')) {
            return Err(IdError::BadChar {
                what: WHAT,
                value: s.to_owned(),
                ch,
            });
        }
        Ok(Self(s.to_owned()))
    }

    /// The name as a string.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for SessionName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

fn check_len(what: &'static str, s: &str, max: usize) -> Result<(), IdError> {
    if s.is_empty() {
        return Err(IdError::Empty { what });
    }
    if s.len() > max {
        return Err(IdError::TooLong {
            what,
            len: s.len(),
            max,
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn node_ids() {
        assert!(NodeId::new("worker-1.example_a").is_ok());
        assert_eq!(NodeId::new(""), Err(IdError::Empty { what: "node id" }));
        assert!(matches!(
            NodeId::new("a b"),
            Err(IdError::BadChar { ch: ' ', .. })
        ));
        assert!(matches!(
            NodeId::new(&"x".repeat(129)),
            Err(IdError::TooLong { len: 129, .. })
        ));
    }

    #[test]
    fn session_names() {
        assert!(SessionName::new("agent 1 (claude)").is_ok());
        assert!(SessionName::new("a:b").is_err());
        assert!(SessionName::new("a.b").is_err());
        assert!(SessionName::new("a\nb").is_err());
    }
}

/// Addresses one session in the fleet: the node, the tmux server's socket path on that node (a
/// session name is unique only per tmux server) and the session name.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SessionRef {
    pub node_id: String,
    pub tmux_socket: String,
    pub session_name: String,
}

/// An agent process's identity: its pid and start time (clock ticks since boot), so that a
/// reused pid is never taken for the process it replaced.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Incarnation {
    pub pid: u32,
    pub start_time: u64,
}

impl From<&argus_proto::v1::Incarnation> for Incarnation {
    fn from(p: &argus_proto::v1::Incarnation) -> Self {
        Self {
            pid: p.pid,
            start_time: p.start_time,
        }
    }
}

impl From<Incarnation> for argus_proto::v1::Incarnation {
    fn from(i: Incarnation) -> Self {
        Self {
            pid: i.pid,
            start_time: i.start_time,
        }
    }
}
