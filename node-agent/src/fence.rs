//! Fencing: the highest controller epoch this node agent has accepted, persisted in its state
//! directory so that a restarted agent still refuses a stale controller, plus the set of command
//! ids already executed (at most once per id).
//!
//! The id set lives in memory only: a restarted agent attaches anew and gets a higher epoch, so a
//! command from before its restart is refused as stale before its id matters.

use std::collections::{HashSet, VecDeque};
use std::path::{Path, PathBuf};

/// How many executed command ids are remembered.
const REMEMBERED_IDS: usize = 65_536;

/// Why the fence refused something.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum FenceError {
    /// The epoch is lower than one already accepted.
    #[error("epoch {got} is stale: epoch {highest} was already accepted")]
    Stale { got: u64, highest: u64 },
    /// The command id was executed before.
    #[error("command {0} was already executed")]
    Duplicate(String),
}

/// The node agent's fence.
pub struct Fence {
    path: PathBuf,
    highest: u64,
    seen: HashSet<String>,
    order: VecDeque<String>,
}

impl Fence {
    /// Loads the persisted epoch from `state_dir/epoch` (0 when there is none).
    pub fn load(state_dir: &Path) -> std::io::Result<Self> {
        std::fs::create_dir_all(state_dir)?;
        let path = state_dir.join("epoch");
        let highest = match std::fs::read_to_string(&path) {
            Ok(s) => s.trim().parse().unwrap_or(0),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => 0,
            Err(e) => return Err(e),
        };
        Ok(Self {
            path,
            highest,
            seen: HashSet::new(),
            order: VecDeque::new(),
        })
    }

    /// The highest epoch accepted so far.
    pub fn highest(&self) -> u64 {
        self.highest
    }

    /// Accepts the epoch of a Welcome: it must not be lower than any accepted before. The new
    /// value is on disk before this returns.
    pub fn accept_epoch(&mut self, epoch: u64) -> Result<(), FenceError> {
        if epoch < self.highest {
            return Err(FenceError::Stale {
                got: epoch,
                highest: self.highest,
            });
        }
        if epoch > self.highest {
            let tmp = self.path.with_extension("tmp");
            let write = std::fs::write(&tmp, epoch.to_string())
                .and_then(|()| std::fs::rename(&tmp, &self.path));
            if let Err(e) = write {
                tracing::error!(error = %e, path = %self.path.display(), "could not persist epoch");
            }
            self.highest = epoch;
        }
        Ok(())
    }

    /// Admits a command: its epoch must be current and its id new. Records the id.
    pub fn admit(&mut self, command_id: &str, epoch: u64) -> Result<(), FenceError> {
        if epoch < self.highest {
            return Err(FenceError::Stale {
                got: epoch,
                highest: self.highest,
            });
        }
        if !self.seen.insert(command_id.to_owned()) {
            return Err(FenceError::Duplicate(command_id.to_owned()));
        }
        self.order.push_back(command_id.to_owned());
        if self.order.len() > REMEMBERED_IDS
            && let Some(old) = self.order.pop_front()
        {
            self.seen.remove(&old);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn epochs_persist_and_stale_ones_are_refused() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut f = Fence::load(dir.path()).expect("load");
        assert_eq!(f.highest(), 0);
        f.accept_epoch(5).expect("accept 5");
        assert_eq!(
            f.accept_epoch(4),
            Err(FenceError::Stale { got: 4, highest: 5 })
        );
        let mut again = Fence::load(dir.path()).expect("reload");
        assert_eq!(again.highest(), 5);
        assert!(matches!(
            again.admit("c1", 4),
            Err(FenceError::Stale { .. })
        ));
        assert_eq!(again.admit("c1", 5), Ok(()));
        assert_eq!(
            again.admit("c1", 5),
            Err(FenceError::Duplicate("c1".into()))
        );
    }
}
