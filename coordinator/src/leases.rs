//! Worker leases, held in the leader's memory.
//!
//! Committing every heartbeat would cost one raft round (and fsync) per worker per second, so
//! only registration and expiry go through the log. The leader renews a lease on each heartbeat
//! here; when one runs out it proposes `Command::ExpireWorkers` naming the worker. A new leader
//! knows nothing of its predecessor's renewals, so on election it grants every live worker a
//! fresh full lease ([`Leases::grant_all`]): a worker that died just before the election is found
//! one lease later than it would have been, never earlier.
//!
//! Pure bookkeeping: the caller passes the leader's clock in; no I/O. The server passes its
//! monotonic clock (never the wall clock, which NTP may step).

use std::collections::HashMap;

use crate::state::{ClusterState, WorkerStatus};

#[derive(Debug, Default, Clone)]
pub struct Leases {
    /// worker id → leader-clock ms at which its lease ends
    expires_ms: HashMap<String, u64>,
}

impl Leases {
    /// Renew `worker`'s lease for `lease_ms` from `now_ms` (registration, heartbeat).
    pub fn renew(&mut self, worker: &str, now_ms: u64, lease_ms: u64) {
        let until = now_ms.saturating_add(lease_ms);
        match self.expires_ms.get_mut(worker) {
            Some(t) => *t = (*t).max(until),
            None => {
                self.expires_ms.insert(worker.to_string(), until);
            }
        }
    }

    /// On becoming leader: every live worker of `state` gets a full lease from `now_ms`.
    pub fn grant_all(&mut self, state: &ClusterState, now_ms: u64) {
        self.expires_ms.clear();
        self.sync(state, now_ms);
    }

    /// Follow the committed state: live workers this table does not know yet get a full lease,
    /// dead or unknown ones are forgotten.
    pub fn sync(&mut self, state: &ClusterState, now_ms: u64) {
        self.expires_ms.retain(|id, _| state.workers.get(id).is_some_and(|w| w.status != WorkerStatus::Dead));
        for (id, w) in &state.workers {
            if w.status != WorkerStatus::Dead && !self.expires_ms.contains_key(id) {
                self.expires_ms.insert(id.clone(), now_ms.saturating_add(w.lease_ms));
            }
        }
    }

    /// Live workers of `state` whose lease ended before `now_ms`, in id order.
    pub fn expired(&self, state: &ClusterState, now_ms: u64) -> Vec<String> {
        let mut out: Vec<String> = state
            .workers
            .iter()
            .filter(|(_, w)| w.status != WorkerStatus::Dead)
            .filter(|(id, _)| self.expires_ms.get(*id).is_some_and(|t| *t < now_ms))
            .map(|(id, _)| id.clone())
            .collect();
        out.sort();
        out
    }

    /// When `worker`'s lease ends, if it holds one.
    pub fn expires_ms(&self, worker: &str) -> Option<u64> {
        self.expires_ms.get(worker).copied()
    }

    pub fn len(&self) -> usize {
        self.expires_ms.len()
    }

    pub fn is_empty(&self) -> bool {
        self.expires_ms.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::Command;

    fn state_with(workers: &[&str]) -> ClusterState {
        let mut s = ClusterState::default();
        for (i, w) in workers.iter().enumerate() {
            let cmd = Command::RegisterWorker {
                gpus: 0,
                worker: w.to_string(),
                addr: "a".into(),
                protocol: cyclotron_proto::PROTOCOL_VERSION,
                lease_ms: 1_000,
                now_ms: 0,
                session_hash: String::new(),
                replaces: None,
            };
            s.apply(i as u64 + 1, &cmd);
        }
        s
    }

    #[test]
    fn heartbeats_keep_a_worker_alive_and_silence_expires_it() {
        let s = state_with(&["a", "b"]);
        let mut l = Leases::default();
        l.sync(&s, 0);
        assert_eq!(l.len(), 2);
        l.renew("a", 900, 1_000);
        assert!(l.expired(&s, 1_000).is_empty(), "a lease that ends at 1000 is still valid at 1000");
        assert_eq!(l.expired(&s, 1_001), vec!["b"]);
        // renewals never shorten a lease
        l.renew("a", 100, 1_000);
        assert_eq!(l.expires_ms("a"), Some(1_900));
        assert_eq!(l.expired(&s, 1_901), vec!["a", "b"]);
    }

    #[test]
    fn a_new_leader_grants_every_live_worker_a_full_lease_and_forgets_the_dead() {
        let mut s = state_with(&["a", "b"]);
        let mut l = Leases::default();
        l.sync(&s, 0);
        s.apply(10, &Command::ExpireWorkers { workers: vec!["b".into()], now_ms: 2_000 });
        l.grant_all(&s, 5_000);
        assert_eq!(l.expires_ms("a"), Some(6_000));
        assert_eq!(l.expires_ms("b"), None);
        assert!(l.expired(&s, 5_500).is_empty());
    }
}
