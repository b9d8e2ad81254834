//! Identifier newtypes shared by every crate (the proto crate re-exports them on the wire).

use std::fmt;

use serde::{Deserialize, Serialize};

macro_rules! id {
    ($(#[$doc:meta])* $name:ident($inner:ty)) => {
        $(#[$doc])*
        #[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
        #[serde(transparent)]
        pub struct $name(pub $inner);

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, "{}", self.0)
            }
        }
    };
}

id!(
    /// A job, named by its spec and made unique by the coordinator.
    JobId(String)
);
id!(
    /// One run of a job's task (a stage on a group of workers).
    RunId(String)
);
id!(
    /// An optimiser step, counted over a whole job.
    Step(u64)
);
id!(
    /// A worker's rank within its group (0..world_size).
    Rank(u32)
);
