//! glibc malloc tuning for training processes.
//!
//! libtorch allocates every activation and gradient with `posix_memalign`. glibc serves blocks
//! above its mmap threshold with a fresh `mmap` and returns them with `munmap` on free, so each
//! training step page-faults its whole working set back in (the kernel zeroes every page). On the
//! small ResNet at batch 256 that was 3.2 M minor faults in 13 s against 0.9 M for the same steps in
//! Python, and ~20% of the step time. Keeping large blocks on the heap (no mmap, trim only above
//! 1 GiB) makes freed activation memory reusable by the next step: 0.09 M faults, and the step
//! runs as fast as PyTorch eager's. Set `CYCLOTRON_MALLOC_TUNING=0` to leave glibc's defaults.

/// glibc `mallopt` parameters (malloc.h).
const M_TRIM_THRESHOLD: i32 = -1;
const M_MMAP_MAX: i32 = -4;

/// Apply the tuning once, at process start, before heavy allocation. Returns whether it was applied.
pub fn tune_for_training() -> bool {
    if std::env::var("CYCLOTRON_MALLOC_TUNING").is_ok_and(|v| v == "0") {
        return false;
    }
    apply()
}

#[cfg(all(target_os = "linux", target_env = "gnu"))]
#[allow(unsafe_code)]
fn apply() -> bool {
    // SAFETY: mallopt only changes allocator parameters; it is thread-safe in glibc and takes
    // plain integers. A zero return means the parameter was refused, which we report.
    unsafe { libc::mallopt(M_MMAP_MAX, 0) == 1 && libc::mallopt(M_TRIM_THRESHOLD, 1 << 30) == 1 }
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
fn apply() -> bool {
    false
}

#[cfg(test)]
mod tests {
    #[test]
    fn tuning_applies_on_glibc_and_can_be_turned_off() {
        if cfg!(all(target_os = "linux", target_env = "gnu")) {
            assert!(super::apply());
        }
        // allocations still work after tuning, large ones included
        let v = vec![1u8; 64 << 20];
        assert_eq!(v.iter().map(|&x| x as usize).sum::<usize>(), 64 << 20);
    }
}
