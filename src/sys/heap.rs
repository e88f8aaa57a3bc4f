//! Keeps the relay's resident memory near its idle size after a burst of
//! connections. With glibc's allocator, each thread may get its own arena
//! (up to eight per core); after a burst of a thousand tunnels those arenas
//! keep their freed memory resident (17 MiB in `ccr-load`), and
//! `malloc_trim` cannot return the free top of any arena but the main one
//! (it gave back 4 of those 17 MiB). Capping the arenas alone does not
//! help either: the one heap stays fragmented. Both together bring the
//! relay back within about 3 MiB of its idle size (docs/MEASURED.md, "Load"). The
//! static (musl) build's allocator has no per-thread arenas, no `mallopt`
//! and no `malloc_trim`, and unmaps freed memory itself: nothing to do.

/// Puts every thread on glibc's main arena. Call before any thread starts
/// (arenas are attached on a thread's first allocation).
pub fn single_arena() {
    // Throughput: the tunnels' buffers come from one locked arena, small
    // allocations from each thread's own cache; `make bench` rows a/b and
    // `ccr-load`'s burst showed no loss on two cores.
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only sets an allocator parameter.
    unsafe {
        libc::mallopt(libc::M_ARENA_MAX, 1);
    }
}

/// Returns the free memory of the heap to the system; called when no
/// connection is left, so it costs nothing while tunnels are busy.
pub fn release_free() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim only releases free pages; it takes the arena's lock.
    unsafe {
        libc::malloc_trim(0);
    }
}
