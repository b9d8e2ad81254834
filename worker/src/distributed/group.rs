//! Joining a data-parallel group in a static launch (torchrun's static mode): every process is
//! told its rank, the world size and every rank's `host:port`, then builds the TCP ring (a world
//! of one needs no network) and hands the learner its [`GradAverage`].
//!
//! Transport: on CUDA with the `nccl` feature, gradients are reduced by NCCL on the device (the
//! ring only bootstraps it: rank 0's `ncclUniqueId` travels over one ring broadcast); otherwise
//! they go through the TCP ring on the host. [`Backend`] (or `CYCLOTRON_COLLECTIVE=ring|nccl`)
//! overrides the choice; asking for NCCL where it cannot run is an error, never a silent fallback.
//!
//! Roles: rank 0 is the writer: only it commits snapshots, checkpoints and results (the others
//! write to a `memory://` store that is dropped with the process) and only it writes `--out`.

use std::time::Duration;

use tch::Device;

use super::{GradAverage, HostRing, NcclBuckets, BUCKET_BYTES};
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
    /// Which transport reduces gradients.
    pub backend: Backend,
}

/// The gradient transport of a group.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    /// NCCL when the model is on CUDA and the build has it, else the TCP ring.
    Auto,
    Ring,
    Nccl,
}

impl Backend {
    /// `CYCLOTRON_COLLECTIVE` (`auto`, `ring`, `nccl`), [`Backend::Auto`] when unset.
    pub fn from_env() -> Result<Backend> {
        match std::env::var("CYCLOTRON_COLLECTIVE").as_deref() {
            Err(_) | Ok("") | Ok("auto") => Ok(Backend::Auto),
            Ok("ring") => Ok(Backend::Ring),
            Ok("nccl") => Ok(Backend::Nccl),
            Ok(other) => Err(Error::Invalid {
                what: "CYCLOTRON_COLLECTIVE".into(),
                message: format!("{other:?} is not a collective; use auto, ring or nccl"),
            }),
        }
    }
}

impl GroupSpec {
    pub fn new(rank: usize, world_size: usize, peers: Vec<String>) -> GroupSpec {
        GroupSpec { rank, world_size, peers, generation: 0, timeout: DEFAULT_TIMEOUT, backend: Backend::Auto }
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

    /// Connects to the group for a model on `device`: the ring (or [`Local`] for one rank), and
    /// NCCL on top of it when [`Backend`] and the device call for it.
    pub fn join(&self, device: Device) -> Result<Box<dyn GradAverage>> {
        self.validate()?;
        let cuda = match device {
            Device::Cuda(d) => Some(d),
            _ => None,
        };
        let nccl = match (self.backend, cuda) {
            (Backend::Ring, _) | (Backend::Auto, None) => None,
            (Backend::Auto, Some(_)) if self.world_size == 1 || !cfg!(feature = "nccl") => {
                if self.world_size > 1 {
                    tracing::warn!(
                        "built without the `nccl` feature: CUDA gradients go through the CPU ring"
                    );
                }
                None
            }
            (_, Some(d)) => Some(d),
            (Backend::Nccl, None) => {
                return Err(Error::Invalid {
                    what: "CYCLOTRON_COLLECTIVE".into(),
                    message:
                        "nccl needs the model on a CUDA device; set runtime.device = \"cuda\" or use ring"
                            .into(),
                })
            }
        };
        let c = self.bootstrap()?;
        let Some(d) = nccl else {
            tracing::info!(
                rank = self.rank,
                world = self.world_size,
                "joined the data-parallel group (ring)"
            );
            return Ok(Box::new(HostRing::new(c, self.timeout)?));
        };
        let mut c = c;
        let mine = if self.rank == 0 { Some(crate::collective::nccl::Nccl::unique_id()?) } else { None };
        let id = crate::collective::nccl::UniqueId::share(c.as_mut(), mine)?;
        let mut nccl = crate::collective::nccl::Nccl::new(self.rank, self.world_size, &id, d)?;
        nccl.set_timeout(self.timeout);
        tracing::info!(
            rank = self.rank,
            world = self.world_size,
            device = d,
            "joined the data-parallel group (nccl)"
        );
        let bootstrap = super::CommThread::spawn(c, self.timeout)?;
        Ok(Box::new(NcclBuckets::new(nccl, bootstrap, BUCKET_BYTES / 4)))
    }

    /// The host collective: the TCP ring for two or more ranks, [`Local`] for one.
    fn bootstrap(&self) -> Result<Box<dyn Collective>> {
        Ok(if self.world_size == 1 {
            Box::new(Local::new())
        } else {
            let cfg = RingConfig {
                rank: self.rank,
                world_size: self.world_size,
                peers: self.peers.clone(),
                generation: self.generation,
                timeout: self.timeout,
                // the agent passes the rendezvous' secret in the environment, never in argv
                secret: crate::collective::ring::secret_from_env()?,
            };
            Box::new(Ring::connect(cfg)?)
        })
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
