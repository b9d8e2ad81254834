//! Size limits of what crosses the wire, checked by the coordinator before it allocates, stores or
//! replicates anything from a request, and set as gRPC message limits on both ends (tonic refuses
//! a larger message with `OUT_OF_RANGE` before decoding it).
//!
//! | what | limit |
//! |---|---|
//! | a request to `JobService` | [`MAX_JOB_REQUEST`] (a spec is at most 64 KiB) |
//! | a request to `WorkerService` | [`MAX_WORKER_REQUEST`] (a result report is the largest) |
//! | a raft message between coordinators | [`MAX_RAFT_MESSAGE`] (snapshots carry the whole state) |
//! | any response a client accepts | [`MAX_RESPONSE`] |
//! | `ResultReport.result_json` | [`MAX_RESULT_JSON`] |
//! | `ProgressReport.progress_json` | [`MAX_PROGRESS_JSON`] |
//! | ids (worker, job, request), addresses | [`MAX_ID_LEN`] |
//! | free text (a failure, a cancel reason) | [`MAX_TEXT`] |

use crate::ServiceError;

pub const MAX_JOB_REQUEST: usize = 1 << 20;
pub const MAX_WORKER_REQUEST: usize = 5 << 20;
pub const MAX_RAFT_MESSAGE: usize = 256 << 20;
pub const MAX_RESPONSE: usize = 64 << 20;
pub const MAX_RESULT_JSON: usize = 4 << 20;
pub const MAX_PROGRESS_JSON: usize = 256 << 10;
pub const MAX_ID_LEN: usize = 256;
pub const MAX_TEXT: usize = 64 << 10;

/// `INVALID_ARGUMENT` naming `field` when `value` is longer than `max` bytes.
pub fn check_len(field: &str, value: &str, max: usize) -> Result<(), ServiceError> {
    if value.len() > max {
        return Err(ServiceError::InvalidArgument(format!(
            "{field} is {} bytes; at most {max} are accepted",
            value.len()
        )));
    }
    Ok(())
}

/// `text` cut to at most `max` bytes (at a character boundary), marked when cut.
pub fn truncate(text: &str, max: usize) -> String {
    if text.len() <= max {
        return text.to_string();
    }
    let mut end = max.saturating_sub(32);
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}… ({} bytes cut)", &text[..end], text.len() - end)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lengths_are_checked_and_texts_cut_at_character_boundaries() {
        assert!(check_len("worker_id", "w1", MAX_ID_LEN).is_ok());
        let e = check_len("worker_id", &"w".repeat(300), MAX_ID_LEN).unwrap_err().to_string();
        assert_eq!(e, "worker_id is 300 bytes; at most 256 are accepted");
        assert_eq!(truncate("short", 100), "short");
        let long = "é".repeat(100);
        let cut = truncate(&long, 64);
        assert!(cut.len() <= 64 + 32 && cut.contains("bytes cut"), "{cut}");
    }
}
