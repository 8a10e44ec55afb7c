//! Where the compute runs: [`on_worker`] moves a whole job (a training run,
//! an evaluation) onto a worker of rayon's global pool, so the parallel
//! regions inside it never park the calling thread.
//!
//! From a thread outside the pool, every `par_iter` queues its jobs, wakes
//! a worker and puts the caller to sleep until the last job ends: two
//! context switches per region, dozens of regions per training step. From
//! a worker, a region pushes its jobs on the worker's own deque and works
//! on them itself while the other workers steal; nobody sleeps. PyTorch
//! gets the same effect from OpenMP's spinning team. `aezoo bench ae-mlp`
//! against `AEZOO_ON_POOL=0`: 64.6k → 86.6k training images/s
//! (ARCHITECTURE.md, fast paths).

/// Stack of each worker: candle walks the autograd graph recursively, and a
/// job that used to run on the main thread (8 MiB) must not find less.
const WORKER_STACK: usize = 64 << 20;

/// Whether jobs go to a pool worker (`AEZOO_ON_POOL=0` keeps them on the
/// calling thread, to compare).
pub fn enabled() -> bool {
    static ON: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *ON.get_or_init(|| !matches!(std::env::var("AEZOO_ON_POOL").as_deref(), Ok("0")))
}

/// Builds rayon's global pool with workers whose stacks are as large as a
/// main thread's (64 MiB of address space, touched only as used). Call it
/// before anything uses rayon; later calls, or a pool already built, are
/// no-ops (returns whether this call built it).
pub fn init_global() -> bool {
    rayon::ThreadPoolBuilder::new()
        .stack_size(WORKER_STACK)
        .build_global()
        .is_ok()
}

/// Runs `f` on a worker of rayon's global pool and returns its result (a
/// panic in `f` resumes on the caller). Inside the pool already, or with
/// [`enabled`] false, `f` runs here.
pub fn on_worker<R: Send>(f: impl FnOnce() -> R + Send) -> R {
    if !enabled() || rayon::current_thread_index().is_some() {
        return f();
    }
    let mut out = None;
    rayon::scope(|s| s.spawn(|_| out = Some(f())));
    out.expect("rayon::scope returned before its job ran")
}

/// Threads of the pool the caller's parallel regions run on.
pub fn threads() -> usize {
    rayon::current_num_threads()
}

/// Sets up this process the way aezoo's speed figures are measured; call
/// it first thing in `main`, before any other thread exists (the `aezoo`
/// binary and the timing examples do):
///
/// - glibc's allocator keeps large buffers in the heap: by default it
///   returns each to the kernel on free and page-faults it back on the next
///   op, which a training step's tensors hit every time
///   (`vae-conv` 724 → 885 training images/s, ARCHITECTURE.md);
/// - candle's CPU pool spins 100 pauses after an op, not 25,000 (~1.7 ms):
///   on 2 cores its spinning thread took a core from the rayon workers
///   (16 % of `vae-mlp`'s CPU samples); a set
///   `CANDLE_BARRIER_POOL_SPIN_LIMIT` wins;
/// - rayon's global pool with large stacks ([`init_global`]);
/// - subnormals flushed on every compute thread
///   ([`crate::fused::flush_denormals`]).
pub fn tune_process() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only changes allocator parameters; the caller runs
    // this before any other thread exists.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 1 << 30);
        libc::mallopt(libc::M_TRIM_THRESHOLD, 1 << 30);
        libc::mallopt(libc::M_TOP_PAD, 64 << 20);
    }
    if std::env::var_os("CANDLE_BARRIER_POOL_SPIN_LIMIT").is_none() {
        // Before candle's pool starts (it reads the variable then).
        std::env::set_var("CANDLE_BARRIER_POOL_SPIN_LIMIT", "100");
    }
    init_global();
    crate::fused::flush_denormals();
}
