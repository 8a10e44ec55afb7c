//! The process set-up of the `aezoo` binary (and of the timing examples,
//! which include this file): what aezoo's speed figures are measured under.
//! Call [`tune`] first thing in `main`, before any other thread exists.
//!
//! - glibc's allocator keeps large buffers in the heap: by default it
//!   returns each to the kernel on free and page-faults it back on the next
//!   op, which a training step's tensors hit every time; commands on
//!   photographs at their own size use one arena, the main heap
//!   (`aezoo_nn::runtime::retain_freed_memory`);
//! - candle's CPU pool spins 100 pauses after an op, not 25,000 (~1.7 ms):
//!   on 2 cores its spinning thread took a core from the rayon workers; a
//!   set `CANDLE_BARRIER_POOL_SPIN_LIMIT` wins;
//! - candle's own element-wise pool gets no threads (`CANDLE_NUM_THREADS=1`):
//!   what of a step still runs through candle's element-wise ops runs on the
//!   calling rayon worker instead of waking a third thread that competes
//!   with the workers for the cores; a set `CANDLE_NUM_THREADS` wins;
//! - rayon's global pool with large stacks and subnormals flushed on every
//!   compute thread (`aezoo_nn::runtime::init`).

/// Sets up this process (see the module docs); `large_buffers` for a
/// command whose buffers outgrow a thread arena's 64 MiB heaps
/// (photographs at their own size): one arena.
pub fn tune(large_buffers: bool) {
    aezoo_nn::runtime::retain_freed_memory(large_buffers);
    if aezoo_env::foreign("CANDLE_BARRIER_POOL_SPIN_LIMIT").is_none() {
        // Before candle's pool starts (it reads the variable then).
        std::env::set_var("CANDLE_BARRIER_POOL_SPIN_LIMIT", "100");
    }
    if aezoo_env::foreign("CANDLE_NUM_THREADS").is_none() {
        // Read only by candle's barrier pool, when it first starts.
        std::env::set_var("CANDLE_NUM_THREADS", "1");
    }
    aezoo_nn::runtime::init();
}
