//! Entering a pod's network namespace for the rest of the process: the
//! iptables tools the plugin runs after this inherit it. Called once the
//! API server has been read (from the node's namespace).

use std::fs::File;
use std::path::Path;

use nix::sched::{CloneFlags, setns};

#[derive(Debug, thiserror::Error)]
pub enum NetnsError {
    #[error("the network namespace {path} does not exist")]
    Missing { path: String },
    #[error("cannot enter the network namespace {path}: {reason}")]
    Enter { path: String, reason: String },
}

/// Moves the calling thread (the plugin is single-threaded by then) into
/// the network namespace at `path` (such as `/var/run/netns/cni-…`).
pub fn enter(path: &Path) -> Result<(), NetnsError> {
    let shown = path.display().to_string();
    let file = File::open(path).map_err(|e| match e.kind() {
        std::io::ErrorKind::NotFound => NetnsError::Missing { path: shown.clone() },
        _ => NetnsError::Enter {
            path: shown.clone(),
            reason: e.to_string(),
        },
    })?;
    setns(&file, CloneFlags::CLONE_NEWNET).map_err(|e| NetnsError::Enter {
        path: shown,
        reason: e.to_string(),
    })
}
