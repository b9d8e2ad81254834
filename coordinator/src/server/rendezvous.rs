//! Rendezvous of one run: the ranks of (job, task, generation) each publish their data-plane
//! address (rank 0 also the NCCL unique id); every call returns the ordered list once all ranks
//! of that generation published, with the generation's ring secret (fresh random bytes the ranks
//! prove to each other before any tensor moves), or fails `DEADLINE_EXCEEDED` at its deadline (the server's
//! `rendezvous_timeout`, or the client's gRPC deadline when shorter). A call for a generation
//! that is not the task's current one fails `FAILED_PRECONDITION`, also while it waits (the group
//! was torn down meanwhile). A rank may call again (a retry): its address is replaced, and once
//! the round is complete a late call gets the same answer at once.
//!
//! Rounds live in the leader's memory, not in the raft log: publishing an address is only useful
//! to the group currently being formed, and committing it would cost a raft round per rank for
//! nothing a new leader needs. If the leader dies mid-rendezvous, every rank's call fails
//! (`UNAVAILABLE`/transport error) and the agents retry against the new leader, which collects
//! the round again. A rank that already got its answer from the old leader does not call again;
//! the others then wait until their deadline, report a transient failure, and the task restarts
//! under a new generation — slower, but always correct. A replica that becomes leader starts with
//! no rounds; one that stops leading fails its waiting calls with `UNAVAILABLE` and the leader.
//!
//! Only the group's members take part: a call must carry the session of the worker that holds
//! `rank` in the task's group (`PERMISSION_DENIED` otherwise), so no one else can publish an
//! address for a rank or learn the group's addresses and secret.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use cyclotron_proto::v1 as pb;
use cyclotron_proto::ServiceError;
use tokio::sync::watch;
use tonic::metadata::MetadataMap;

use super::Shared;
use crate::state::{ClusterState, TaskStatus};

type RoundKey = (String, usize, u64);
type Answer = Option<Arc<pb::RendezvousResponse>>;

struct Round {
    addrs: Vec<Option<String>>,
    nccl_unique_id: Vec<u8>,
    /// This generation's ring secret, drawn when the round opens.
    secret: Vec<u8>,
    done: watch::Sender<Answer>,
}

#[derive(Default)]
pub(crate) struct Rendezvous {
    rounds: Mutex<HashMap<RoundKey, Round>>,
}

impl Rendezvous {
    /// Publish `rank`'s address; the receiver holds the answer once the round completes.
    fn publish(
        &self,
        key: RoundKey,
        world: usize,
        rank: usize,
        addr: String,
        nccl: Vec<u8>,
        secret: &[u8; 32],
    ) -> watch::Receiver<Answer> {
        let mut rounds = self.rounds.lock().unwrap_or_else(|e| e.into_inner());
        let round = rounds.entry(key).or_insert_with(|| Round {
            addrs: vec![None; world],
            nccl_unique_id: vec![],
            secret: secret.to_vec(),
            done: watch::channel(None).0,
        });
        if round.done.borrow().is_none() {
            round.addrs[rank] = Some(addr);
            if rank == 0 {
                round.nccl_unique_id = nccl;
            }
            if round.addrs.iter().all(Option::is_some) {
                let answer = pb::RendezvousResponse {
                    data_addrs: round.addrs.iter().flatten().cloned().collect(),
                    nccl_unique_id: round.nccl_unique_id.clone(),
                    ring_secret: round.secret.clone(),
                };
                round.done.send_replace(Some(Arc::new(answer)));
            }
        }
        round.done.subscribe()
    }

    /// Ranks that have not published yet (for the timeout message).
    fn missing(&self, key: &RoundKey) -> Vec<usize> {
        let rounds = self.rounds.lock().unwrap_or_else(|e| e.into_inner());
        rounds
            .get(key)
            .map(|r| r.addrs.iter().enumerate().filter(|(_, a)| a.is_none()).map(|(i, _)| i).collect())
            .unwrap_or_default()
    }

    /// Drop the rounds of generations that no longer run.
    pub fn forget_stale(&self, state: &ClusterState) {
        let mut rounds = self.rounds.lock().unwrap_or_else(|e| e.into_inner());
        rounds.retain(|(job, task, generation), _| current_world(state, job, *task, *generation).is_ok());
    }

    /// Forget every round (a new leader term: rounds are collected again).
    pub fn clear(&self) {
        self.rounds.lock().unwrap_or_else(|e| e.into_inner()).clear();
    }

    pub fn len(&self) -> usize {
        self.rounds.lock().unwrap_or_else(|e| e.into_inner()).len()
    }
}

/// The group size if (job, task) runs `generation` now.
fn current_world(
    state: &ClusterState,
    job: &str,
    task: usize,
    generation: u64,
) -> Result<usize, ServiceError> {
    current_group(state, job, task, generation).map(|w| w.len())
}

/// The group (workers in rank order) if (job, task) runs `generation` now.
fn current_group<'a>(
    state: &'a ClusterState,
    job: &str,
    task: usize,
    generation: u64,
) -> Result<&'a [String], ServiceError> {
    let (j, t) = super::worker_service::job_task(state, job, task)?;
    match &t.status {
        TaskStatus::Running { workers, generation: g } if *g == generation && !j.status.is_terminal() => {
            Ok(workers)
        }
        TaskStatus::Running { generation: g, .. } if !j.status.is_terminal() => {
            Err(ServiceError::FailedPrecondition(format!(
                "rendezvous of job {job} task {task}: generation {generation} is over, the current one is {g}"
            )))
        }
        other => Err(ServiceError::FailedPrecondition(format!(
            "rendezvous of job {job} task {task} generation {generation}: the task is {} (job {})",
            other.name(),
            j.status.name()
        ))),
    }
}

/// The client's deadline from the `grpc-timeout` header (`<digits><H|M|S|m|u|n>`).
pub(crate) fn grpc_timeout(metadata: &MetadataMap) -> Option<Duration> {
    let text = metadata.get("grpc-timeout")?.to_str().ok()?;
    let (digits, unit) = text.split_at(text.len().checked_sub(1)?);
    let n: u64 = digits.parse().ok()?;
    Some(match unit {
        "H" => Duration::from_secs(n * 3600),
        "M" => Duration::from_secs(n * 60),
        "S" => Duration::from_secs(n),
        "m" => Duration::from_millis(n),
        "u" => Duration::from_micros(n),
        "n" => Duration::from_nanos(n),
        _ => return None,
    })
}

impl Shared {
    /// Serve one rendezvous call (see the module doc for the protocol).
    pub(crate) async fn rendezvous_wait(
        &self,
        req: pb::RendezvousRequest,
        client_deadline: Option<Duration>,
    ) -> Result<pb::RendezvousResponse, ServiceError> {
        self.require_leader()?;
        if req.data_addr.is_empty() {
            return Err(ServiceError::InvalidArgument("rendezvous: data_addr must not be empty".into()));
        }
        use cyclotron_proto::limits::{check_len, MAX_ID_LEN};
        check_len("data_addr", &req.data_addr, MAX_ID_LEN)?;
        check_len("job_id", &req.job_id, MAX_ID_LEN)?;
        if req.nccl_unique_id.len() > 1024 {
            return Err(ServiceError::InvalidArgument(format!(
                "rendezvous: nccl_unique_id is {} bytes; an NCCL unique id is 128",
                req.nccl_unique_id.len()
            )));
        }
        let task = req.task as usize;
        let rank = req.rank as usize;
        let world = {
            let state = self.state();
            super::worker_service::verify_session(&state, &req.worker_id, &req.session)?;
            let group = current_group(&state, &req.job_id, task, req.generation)?;
            if rank >= group.len() {
                return Err(ServiceError::InvalidArgument(format!(
                    "rendezvous: rank {rank} out of range, the group has {} workers",
                    group.len()
                )));
            }
            if group[rank] != req.worker_id {
                return Err(ServiceError::PermissionDenied(format!(
                    "rendezvous of job {} task {task} generation {}: rank {rank} is not worker {}'s",
                    req.job_id, req.generation, req.worker_id
                )));
            }
            group.len()
        };
        let secret =
            cyclotron_proto::auth::random_bytes::<32>().map_err(|e| ServiceError::Internal(e.to_string()))?;
        // answer a little before the client gives up, so it sees our reason
        let wait = match client_deadline {
            Some(d) => d.saturating_sub(Duration::from_millis(50)).min(self.config.rendezvous_timeout),
            None => self.config.rendezvous_timeout,
        };
        let deadline = tokio::time::Instant::now() + wait;
        let key: RoundKey = (req.job_id.clone(), task, req.generation);
        let publish = || {
            self.rendezvous.publish(
                key.clone(),
                world,
                rank,
                req.data_addr.clone(),
                req.nccl_unique_id.clone(),
                &secret,
            )
        };
        let mut answer = publish();
        let mut states = self.replica.state();
        // leadership can end without a state change (a partitioned leader): check it regularly
        let mut leadership = tokio::time::interval(Duration::from_millis(250));
        loop {
            if let Some(a) = answer.borrow_and_update().as_ref() {
                return Ok((**a).clone());
            }
            current_world(&states.borrow_and_update(), &req.job_id, task, req.generation)?;
            tokio::select! {
                changed = answer.changed() => {
                    if changed.is_err() {
                        answer = publish(); // the round was reset (a new term): publish again
                    }
                }
                changed = states.changed() => {
                    if changed.is_err() {
                        return Err(ServiceError::Unavailable("coordinator replica stopped".into()));
                    }
                    self.require_leader()?;
                }
                _ = leadership.tick() => self.require_leader()?,
                _ = self.shutting_down() => {
                    return Err(ServiceError::Unavailable("coordinator shutting down; retry at another".into()));
                }
                _ = tokio::time::sleep_until(deadline) => {
                    return Err(ServiceError::Timeout(format!(
                        "rendezvous of job {} task {task} generation {}: ranks {:?} did not publish within {wait:?}",
                        req.job_id,
                        req.generation,
                        self.rendezvous.missing(&key)
                    )));
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grpc_timeouts_parse_in_every_unit() {
        let mut m = MetadataMap::new();
        for (text, expected) in [
            ("5S", Duration::from_secs(5)),
            ("250m", Duration::from_millis(250)),
            ("2M", Duration::from_secs(120)),
        ] {
            m.insert("grpc-timeout", text.parse().unwrap());
            assert_eq!(grpc_timeout(&m), Some(expected));
        }
        m.insert("grpc-timeout", "x".parse().unwrap());
        assert_eq!(grpc_timeout(&m), None);
    }

    #[test]
    fn a_round_completes_when_every_rank_published_and_keeps_rank_order() {
        let r = Rendezvous::default();
        let key: RoundKey = ("j".into(), 0, 1);
        let rx1 = r.publish(key.clone(), 2, 1, "b:1".into(), vec![], &[1; 32]);
        assert!(rx1.borrow().is_none());
        assert_eq!(r.missing(&key), vec![0]);
        let rx0 = r.publish(key.clone(), 2, 0, "a:1".into(), vec![7], &[2; 32]);
        let answer = rx0.borrow().clone().unwrap();
        assert_eq!(answer.data_addrs, vec!["a:1", "b:1"]);
        assert_eq!(answer.nccl_unique_id, vec![7]);
        assert_eq!(answer.ring_secret, vec![1; 32], "the secret drawn when the round opened");
        assert!(rx1.has_changed().unwrap());
        // a late retry gets the same answer
        let again = r.publish(key, 2, 1, "c:9".into(), vec![], &[3; 32]);
        assert_eq!(again.borrow().as_ref().unwrap().data_addrs, vec!["a:1", "b:1"]);
        assert_eq!(r.len(), 1);
        r.forget_stale(&ClusterState::default());
        assert_eq!(r.len(), 0);
    }
}
