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
//! (docs/perf.md).

use std::cell::Cell;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::OnceLock;
use std::time::Instant;

/// Stack of each worker: candle walks the autograd graph recursively, and a
/// job that used to run on the main thread (8 MiB) must not find less.
const WORKER_STACK: usize = 64 << 20;

/// Whether jobs go to a pool worker (`AEZOO_ON_POOL=0` keeps them on the
/// calling thread, to compare).
pub fn enabled() -> bool {
    static ON: OnceLock<bool> = OnceLock::new();
    *ON.get_or_init(|| aezoo_env::flag("AEZOO_ON_POOL"))
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
    rayon::scope(|s| {
        s.spawn(|_| {
            let _busy = Busy::mark();
            keep_warm();
            out = Some(f());
        })
    });
    out.expect("rayon::scope returned before its job ran")
}

/// How long the other workers keep looking for work after a parallel
/// region starts (OpenMP's "blocktime"; Intel's runtime waits 200 ms).
const LINGER_NS: u64 = 30_000_000;
/// Longest one linger job runs before it queues its successor and returns:
/// the most it can hold up a worker that picked it up while waiting inside
/// a join.
const SLICE_NS: u64 = 50_000;

/// Linger jobs queued or running.
static LINGERING: AtomicUsize = AtomicUsize::new(0);
/// When [`keep_warm`] was last called, in ns after [`epoch`].
static LAST_REGION: AtomicU64 = AtomicU64::new(0);

thread_local! {
    /// This thread runs an [`on_worker`] job, or a linger job.
    static BUSY: Cell<bool> = const { Cell::new(false) };
}

/// Sets [`BUSY`] for its lifetime (cleared on unwinding too).
struct Busy;

impl Busy {
    fn mark() -> Self {
        BUSY.with(|b| b.set(true));
        Busy
    }
}

impl Drop for Busy {
    fn drop(&mut self) {
        BUSY.with(|b| b.set(false));
    }
}

fn epoch() -> Instant {
    static E: OnceLock<Instant> = OnceLock::new();
    *E.get_or_init(Instant::now)
}

fn now_ns() -> u64 {
    epoch().elapsed().as_nanos() as u64
}

/// Whether idle workers linger (`AEZOO_LINGER=0` lets them sleep at once,
/// to compare).
pub fn lingering() -> bool {
    static ON: OnceLock<bool> = OnceLock::new();
    *ON.get_or_init(|| aezoo_env::flag("AEZOO_LINGER"))
}

/// Called where a parallel region starts: keeps every other worker of the
/// pool awake for the next [`LINGER_NS`], as OpenMP's team spins between
/// regions. rayon puts a worker to sleep ~50 µs after it last found work;
/// on a VM a sleeping vCPU is halted, and waking it for the next region
/// took 0.1 to several ms when the host was busy — most of the spread of
/// `aezoo bench`'s inference, whose batches are ~2 ms of parallel work
/// between serial sums (docs/perf.md). A linger job runs
/// rayon's work (`rayon::yield_now`) and otherwise yields the CPU to any
/// runnable thread (`sched_yield`: the vCPU stays up without taking the
/// core from anyone); it re-queues itself every [`SLICE_NS`], so a worker
/// that picks one up while it waits inside a join is held at most that
/// long, and never runs on the thread of an [`on_worker`] job.
pub fn keep_warm() {
    if !lingering() {
        return;
    }
    LAST_REGION.store(now_ns(), Ordering::Relaxed);
    let want = rayon::current_num_threads().saturating_sub(1);
    let mut n = LINGERING.load(Ordering::Relaxed);
    while n < want {
        match LINGERING.compare_exchange_weak(n, n + 1, Ordering::Relaxed, Ordering::Relaxed) {
            Ok(_) => {
                rayon::spawn(linger);
                n += 1;
            }
            Err(now) => n = now,
        }
    }
}

/// Linger jobs queued or running now (at most one per worker but one).
pub fn lingerers() -> usize {
    LINGERING.load(Ordering::Relaxed)
}

/// One slice of lingering (see [`keep_warm`]).
fn linger() {
    let expired = || now_ns().saturating_sub(LAST_REGION.load(Ordering::Relaxed)) > LINGER_NS;
    if expired() {
        LINGERING.fetch_sub(1, Ordering::Relaxed);
        return;
    }
    if BUSY.with(Cell::get) {
        // An on_worker job waiting in a join, or a linger job's own
        // yield_now: hand the slot back to the queue for an idle worker.
        if rayon::current_num_threads() > 1 {
            rayon::spawn(linger);
        } else {
            LINGERING.fetch_sub(1, Ordering::Relaxed);
        }
        return;
    }
    let busy = Busy::mark();
    let start = now_ns();
    while now_ns() - start < SLICE_NS && !expired() {
        if !matches!(rayon::yield_now(), Some(rayon::Yield::Executed)) {
            std::thread::yield_now();
        }
    }
    drop(busy);
    if expired() {
        LINGERING.fetch_sub(1, Ordering::Relaxed);
    } else {
        rayon::spawn(linger);
    }
}

/// Threads of the pool the caller's parallel regions run on.
pub fn threads() -> usize {
    rayon::current_num_threads()
}

/// Sets up the compute threads before anything else uses rayon: the
/// global pool with large stacks ([`init_global`]) and subnormals flushed on
/// every thread ([`flush_denormals`]). The `aezoo` binary calls it from its
/// process set-up (allocator, candle's pool), the timing examples too.
pub fn init() {
    init_global();
    flush_denormals();
}

/// Flushes subnormal floats to zero (x86 MXCSR FTZ + DAZ) on the calling
/// thread and on every thread of rayon's global pool; threads started later
/// inherit it from their parent (candle's element-wise pool among them).
/// Returns whether it was set.
///
/// Why: Adam's second moment `v` of a weight whose gradient is tiny (a
/// saturated sigmoid, a dead ReLU) falls below 1.2·10⁻³⁸, and every multiply
/// on a subnormal takes a microcode assist of ~100 cycles: on `ae-mlp` the
/// optimiser step went from 0.66 to 2.2 ms (`aezoo bench ae-mlp`). TensorFlow
/// flushes by default for the same reason; PyTorch offers it as
/// `torch.set_flush_denormal(True)`. The results differ only for magnitudes
/// below 1.2·10⁻³⁸ (f32). Off: `AEZOO_KEEP_DENORMALS=1`. A no-op off x86-64.
pub fn flush_denormals() -> bool {
    if aezoo_env::flag("AEZOO_KEEP_DENORMALS") {
        return false;
    }
    #[cfg(target_arch = "x86_64")]
    {
        #[allow(deprecated)]
        fn set() {
            // SAFETY: MXCSR bits 15 (FTZ) and 6 (DAZ) change only how
            // subnormal SSE/AVX results and inputs are treated.
            unsafe { std::arch::x86_64::_mm_setcsr(std::arch::x86_64::_mm_getcsr() | 0x8040) }
        }
        set();
        rayon::broadcast(|_| set());
        true
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

/// Has glibc's allocator keep large freed buffers in the heap instead of
/// returning each to the kernel and page-faulting it back on the next op,
/// which a training step's tensors hit every time (`vae-conv` 724 → 885
/// training images/s, docs/perf.md): a trim threshold of 1 GiB, a 64 MiB
/// top pad, and with `one_arena` a single arena and no mmap'd chunks (for
/// buffers past 64 MiB, below). A binary's process set-up calls it
/// (`aezoo-cli`'s `process::tune`); returns whether it applied (glibc only).
pub fn retain_freed_memory(one_arena: bool) -> bool {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        // SAFETY: mallopt only changes allocator parameters, under the main
        // arena's lock; glibc initialises malloc before `main` runs.
        unsafe {
            // glibc refuses a threshold above 32 MiB (HEAP_MAX_SIZE / 2):
            // this call changes nothing (kept: the figures above were
            // measured with it); the trim threshold and top pad do the work.
            libc::mallopt(libc::M_MMAP_THRESHOLD, 1 << 30);
            libc::mallopt(libc::M_TRIM_THRESHOLD, 1 << 30);
            libc::mallopt(libc::M_TOP_PAD, 64 << 20);
            // The pool's threads each get an arena of 64 MiB heaps, which
            // cannot hold a photograph's activations (128 MiB at 512 × 512)
            // and map and unmap each one. An SD VAE on a 512 × 512 image:
            // 12.8 M page faults and 25 s as is, the same with a 32 MiB mmap
            // threshold or with no mmap'd chunks; one arena (the main heap)
            // and no mmap'd chunks: 1.4 M faults, 13.5 s. Small models
            // train 2–4 % slower on one arena (its lock), so only when asked.
            if one_arena {
                libc::mallopt(libc::M_ARENA_MAX, 1);
                libc::mallopt(libc::M_MMAP_MAX, 0);
            }
        }
        true
    }
    #[cfg(not(all(target_os = "linux", target_env = "gnu")))]
    {
        false
    }
}
