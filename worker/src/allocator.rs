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
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    use std::process::Command;

    /// Set in the child process that [`probe`] starts.
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    const PROBE: &str = "CYCLOTRON_ALLOCATOR_PROBE";

    /// Whether a fresh 16 MiB block is served by `mmap` (glibc's default above its mmap threshold,
    /// 128 KiB in a fresh process) rather than from the heap. (Not larger: a block above a
    /// thread arena's 64 MiB heap limit is mmapped whatever the settings.)
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    #[allow(unsafe_code)]
    fn big_block_is_mmapped() -> bool {
        // SAFETY: mallinfo2 only reads the allocator's statistics
        let before = unsafe { libc::mallinfo2() }.hblks;
        let block = vec![1u8; 16 << 20];
        // SAFETY: as above
        let after = unsafe { libc::mallinfo2() }.hblks;
        assert_eq!(std::hint::black_box(&block).iter().map(|&x| usize::from(x)).sum::<usize>(), 16 << 20);
        after > before
    }

    /// The child process of [`tuning_keeps_large_blocks_off_mmap_and_can_be_turned_off`]: tunes
    /// (or not, as its environment says) and reports what a large allocation did. Ignored in a
    /// normal run: mallopt changes the whole process, so each case gets a process of its own.
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    #[test]
    #[ignore = "the child process of tuning_keeps_large_blocks_off_mmap_and_can_be_turned_off"]
    fn probe_child() {
        assert!(std::env::var_os(PROBE).is_some(), "run only as a child process");
        let applied = super::tune_for_training();
        println!("probe applied={applied} mmapped={}", big_block_is_mmapped());
    }

    /// (tuning applied, the large block was mmapped) in a fresh process with
    /// `CYCLOTRON_MALLOC_TUNING` set to `setting` (unset for `None`).
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    fn probe(setting: Option<&str>) -> (bool, bool) {
        let exe = std::env::current_exe().unwrap();
        let mut cmd = Command::new(exe);
        cmd.args([
            "--exact",
            "allocator::tests::probe_child",
            "--ignored",
            "--nocapture",
            "--test-threads=1",
        ]);
        cmd.env(PROBE, "1");
        match setting {
            Some(v) => cmd.env("CYCLOTRON_MALLOC_TUNING", v),
            None => cmd.env_remove("CYCLOTRON_MALLOC_TUNING"),
        };
        let out = cmd.output().unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(out.status.success(), "child failed:\n{stdout}\n{}", String::from_utf8_lossy(&out.stderr));
        let line =
            stdout.lines().find(|l| l.contains("probe applied=")).unwrap_or_else(|| panic!("{stdout}"));
        (line.contains("applied=true"), line.contains("mmapped=true"))
    }

    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    #[test]
    fn tuning_keeps_large_blocks_off_mmap_and_can_be_turned_off() {
        // tuned (the default, and any value but 0): a 16 MiB block comes from the heap
        assert_eq!(probe(None), (true, false), "default: tuned, no mmap");
        assert_eq!(probe(Some("1")), (true, false), "CYCLOTRON_MALLOC_TUNING=1: tuned");
        // turned off: glibc's defaults, which serve the block with mmap
        assert_eq!(probe(Some("0")), (false, true), "CYCLOTRON_MALLOC_TUNING=0: glibc defaults");
    }

    #[cfg(not(all(target_os = "linux", target_env = "gnu")))]
    #[test]
    fn tuning_is_not_applied_off_glibc() {
        assert!(!super::tune_for_training());
    }
}
