//! A world of one: every collective is the identity (an average of one value is the value), so a
//! single process runs the data-parallel code path without a network. It honours `abort`.

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use super::{Collective, CollectiveError, ReduceOp, Result};

#[derive(Debug, Default)]
pub struct Local {
    aborted: AtomicBool,
}

impl Local {
    pub fn new() -> Local {
        Local::default()
    }

    fn check(&self) -> Result<()> {
        if self.aborted.load(Ordering::Relaxed) {
            return Err(CollectiveError::Aborted { rank: 0 });
        }
        Ok(())
    }
}

impl Collective for Local {
    fn rank(&self) -> usize {
        0
    }

    fn world_size(&self) -> usize {
        1
    }

    fn all_reduce(&mut self, _buf: &mut [f32], _op: ReduceOp) -> Result<()> {
        self.check()
    }

    fn broadcast(&mut self, _buf: &mut [f32], root: usize) -> Result<()> {
        if root != 0 {
            return Err(CollectiveError::Config { message: format!("broadcast root {root} of 1 rank") });
        }
        self.check()
    }

    fn barrier(&mut self) -> Result<()> {
        self.check()
    }

    fn abort(&self) {
        self.aborted.store(true, Ordering::Relaxed);
    }

    fn set_timeout(&mut self, _timeout: Duration) {}
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::collective::suite;

    #[test]
    fn local_is_the_identity_and_honours_abort() {
        let group: Vec<Box<dyn Collective>> = vec![Box::new(Local::new())];
        let [mut c]: [Box<dyn Collective>; 1] = group.try_into().unwrap_or_else(|_| unreachable!());
        for len in suite::LENGTHS {
            let mut buf: Vec<f32> = (0..len).map(|i| i as f32).collect();
            c.all_reduce(&mut buf, ReduceOp::Average).unwrap();
            c.broadcast(&mut buf, 0).unwrap();
            assert!(buf.iter().enumerate().all(|(i, v)| *v == i as f32));
        }
        c.abort();
        assert!(matches!(c.barrier(), Err(CollectiveError::Aborted { rank: 0 })));
    }
}
