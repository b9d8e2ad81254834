//! The leader loop: on the raft leader only, every `schedule_every` (200 ms by default), ask the
//! scheduler what to do and propose it. On becoming leader it first grants every live worker a
//! fresh lease (renewals were the old leader's memory). Leases run on this process's monotonic
//! clock (`monotonic_ms`); the expiry command carries that reading (it is informational: `apply`
//! does not use it).

use std::sync::Arc;

use tokio::sync::watch;

use super::{monotonic_ms, Shared};
use crate::scheduler::decide;
use crate::state::Outcome;

pub(crate) async fn run(shared: Arc<Shared>, mut stop: watch::Receiver<bool>) {
    let mut every = tokio::time::interval(shared.config.schedule_every);
    every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut was_leader = false;
    loop {
        tokio::select! {
            _ = every.tick() => {}
            _ = stop.wait_for(|s| *s) => return,
        }
        if !shared.replica.status().is_leader {
            was_leader = false;
            continue;
        }
        let round = std::time::Instant::now();
        let now = monotonic_ms();
        let state = shared.state();
        let cmds = {
            let mut leases = shared.leases();
            if was_leader {
                leases.sync(&state, now);
            } else {
                leases.grant_all(&state, now);
                shared.rendezvous.clear();
                tracing::info!(workers = leases.len(), "became leader; every live worker gets a fresh lease");
            }
            decide(&state, &leases, now)
        };
        was_leader = true;
        shared.rendezvous.forget_stale(&state);
        // live step summaries of ended jobs are not shown any more (their pages draw results.json)
        shared.live().retain_jobs(|j| state.jobs.get(j).is_some_and(|j| !j.status.is_terminal()));
        for cmd in cmds {
            match shared.propose(cmd).await {
                Ok(Outcome::Applied) => {}
                Ok(Outcome::Rejected { reason }) => tracing::debug!(%reason, "scheduler proposal rejected"),
                Err(e) => {
                    tracing::warn!(error = %e, "scheduler proposal failed; retrying next round");
                    break;
                }
            }
        }
        if let Some(o) = &shared.config.observer {
            o.observe("LeaderLoop", round.elapsed().as_secs_f64(), tonic::Code::Ok);
        }
    }
}
