//! How the C allocator hands memory back. glibc raises its mmap threshold each time a
//! large block it mapped is freed, up to 32 MiB: after the first password hash (argon2
//! takes 19 MiB and gives it back) every later hash's 19 MiB comes from the heap instead,
//! and stays resident once freed. An idle server that had one login held 23 MiB rather
//! than 14. A fixed threshold keeps large blocks mapped, so freeing them returns them.

/// The size from which glibc maps a block by itself: its own starting value, now fixed.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
const MMAP_THRESHOLD_BYTES: nix::libc::c_int = 128 * 1024;

/// Fixes the allocator's mmap threshold. Call it first, before any thread starts.
pub fn return_large_blocks_when_freed() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only sets an allocator parameter; it is called before any other
    // thread exists, so no allocation runs beside it.
    unsafe {
        nix::libc::mallopt(nix::libc::M_MMAP_THRESHOLD, MMAP_THRESHOLD_BYTES);
    }
}
