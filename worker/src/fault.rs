//! Fault injection for tests and demonstrations of the straggler summary: a rank made slow on
//! purpose. `CYCLOTRON_FAULT_SLOW_RANK=R:MS` makes rank `R` of every data-parallel group sleep `MS`
//! milliseconds at the start of each training step (inside the step's timing, as a slower device
//! would). Read once per process; anything else in the variable is ignored with a warning.

use std::sync::OnceLock;
use std::time::Duration;

/// The environment variable: `RANK:MILLISECONDS`.
pub const SLOW_RANK_ENV: &str = "CYCLOTRON_FAULT_SLOW_RANK";

/// `(rank, delay)` from `RANK:MS`; `None` for anything else.
pub fn parse_slow_rank(text: &str) -> Option<(usize, Duration)> {
    let (rank, ms) = text.trim().split_once(':')?;
    let ms: u64 = ms.trim().parse().ok()?;
    Some((rank.trim().parse().ok()?, Duration::from_millis(ms.min(60_000))))
}

fn slow_rank() -> Option<(usize, Duration)> {
    static SLOW: OnceLock<Option<(usize, Duration)>> = OnceLock::new();
    *SLOW.get_or_init(|| {
        let text = std::env::var(SLOW_RANK_ENV).ok()?;
        let parsed = parse_slow_rank(&text);
        match parsed {
            Some((rank, delay)) => tracing::warn!("{SLOW_RANK_ENV}: rank {rank} sleeps {delay:?} per step"),
            None => tracing::warn!("{SLOW_RANK_ENV}={text:?} is not RANK:MILLISECONDS; ignored"),
        }
        parsed
    })
}

/// Sleep when this process is the rank `CYCLOTRON_FAULT_SLOW_RANK` slows down.
pub fn slow_step(rank: usize) {
    if let Some((slow, delay)) = slow_rank() {
        if slow == rank {
            std::thread::sleep(delay);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slow_rank_parses_rank_and_milliseconds_and_nothing_else() {
        assert_eq!(parse_slow_rank("1:250"), Some((1, Duration::from_millis(250))));
        assert_eq!(parse_slow_rank(" 0 : 5 "), Some((0, Duration::from_millis(5))));
        assert_eq!(parse_slow_rank("1"), None);
        assert_eq!(parse_slow_rank("a:5"), None);
        assert_eq!(parse_slow_rank("1:-5"), None);
    }
}
