//! Another process holding a SQLite database locked, as an operator's `sqlite3` shell or a
//! backup tool would.

use std::io::BufRead;
use std::io::BufReader;
use std::path::Path;
use std::process::{Child, Command, Stdio};

/// `python3` holding `BEGIN EXCLUSIVE` on `db` for `secs` (ended by pid on drop).
pub struct Locker {
    child: Child,
}

impl Locker {
    pub fn hold(db: &Path, secs: u64) -> anyhow::Result<Self> {
        let mut child = Command::new("python3")
            .args([
                "-c",
                "import sqlite3, sys, time\n\
                 c = sqlite3.connect(sys.argv[1], isolation_level=None, timeout=30)\n\
                 c.execute('BEGIN EXCLUSIVE')\n\
                 print('locked', flush=True)\n\
                 time.sleep(float(sys.argv[2]))\n\
                 c.execute('ROLLBACK')",
            ])
            .arg(db)
            .arg(secs.to_string())
            .stdout(Stdio::piped())
            .spawn()?;
        let mut line = String::new();
        if let Some(out) = child.stdout.take() {
            BufReader::new(out).read_line(&mut line)?;
        }
        anyhow::ensure!(
            line.trim() == "locked",
            "python3 could not lock the database"
        );
        Ok(Self { child })
    }

    /// True once the lock holder has ended.
    pub fn ended(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(Some(_)))
    }

    pub fn release(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Locker {
    fn drop(&mut self) {
        self.release();
    }
}
