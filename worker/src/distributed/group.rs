//! Joining a data-parallel group in a static launch (torchrun's static mode): every process is
//! told its rank, the world size and every rank's `host:port`, then builds the TCP ring (a world
//! of one needs no network) and hands the learner a [`GradSync`].
//!
//! Roles: rank 0 is the writer: only it commits snapshots, checkpoints and results (the others
//! write to a `memory://` store that is dropped with the process) and only it writes `--out`.

use std::time::Duration;

use super::GradSync;
use crate::collective::{Collective, Local, Ring, RingConfig, DEFAULT_TIMEOUT};
use crate::error::{Error, Result};

/// Where this process sits in its group.
#[derive(Debug, Clone)]
pub struct GroupSpec {
    pub rank: usize,
    pub world_size: usize,
    /// `host:port` of every rank, in rank order (may be empty for a world of one).
    pub peers: Vec<String>,
    /// The rendezvous generation (bumped when a group is restarted).
    pub generation: u64,
    /// Deadline of connection set-up and of every collective call.
    pub timeout: Duration,
}

impl GroupSpec {
    pub fn new(rank: usize, world_size: usize, peers: Vec<String>) -> GroupSpec {
        GroupSpec { rank, world_size, peers, generation: 0, timeout: DEFAULT_TIMEOUT }
    }

    /// Whether this rank writes results, snapshots and checkpoints.
    pub fn is_writer(&self) -> bool {
        self.rank == 0
    }

    /// Every problem a user can fix, named after the CLI flag.
    pub fn validate(&self) -> Result<()> {
        let bad = |what: &str, message: String| Err(Error::Invalid { what: what.into(), message });
        if self.world_size == 0 {
            return bad("--world-size", "must be at least 1".into());
        }
        if self.rank >= self.world_size {
            return bad("--rank", format!("{} is not below --world-size {}", self.rank, self.world_size));
        }
        if self.world_size > 1 && self.peers.len() != self.world_size {
            return bad(
                "--peers",
                format!(
                    "{} addresses given for --world-size {}; list host:port of every rank",
                    self.peers.len(),
                    self.world_size
                ),
            );
        }
        Ok(())
    }

    /// Connects to the group: the ring for two or more ranks, [`Local`] for one.
    pub fn join(&self) -> Result<GradSync> {
        self.validate()?;
        let c: Box<dyn Collective> = if self.world_size == 1 {
            Box::new(Local::new())
        } else {
            let cfg = RingConfig {
                rank: self.rank,
                world_size: self.world_size,
                peers: self.peers.clone(),
                generation: self.generation,
                timeout: self.timeout,
            };
            Box::new(Ring::connect(cfg)?)
        };
        tracing::info!(rank = self.rank, world = self.world_size, "joined the data-parallel group");
        GradSync::new(c, self.timeout)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bad_launches_name_the_flag() {
        let e = GroupSpec::new(2, 2, vec!["a:1".into(), "b:2".into()]).validate().unwrap_err().to_string();
        assert_eq!(e, "--rank: 2 is not below --world-size 2");
        let e = GroupSpec::new(0, 2, vec!["a:1".into()]).validate().unwrap_err().to_string();
        assert!(e.starts_with("--peers: 1 addresses given for --world-size 2"), "{e}");
        assert!(GroupSpec::new(0, 1, vec![]).validate().is_ok());
    }
}
