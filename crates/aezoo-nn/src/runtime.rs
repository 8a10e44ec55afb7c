//! Where the compute runs, for the binaries: the pool's set-up, running a
//! whole command on one of its workers (so parallel regions never park the
//! calling thread), the allocator setting the speed figures assume, and the
//! machine's measured multiply-add rate. When to use them — the process
//! policy — belongs to the binary (`aezoo-cli`'s `process` module).

pub use aezoo_kernels::pool::{init, on_worker, retain_freed_memory, threads};
pub use aezoo_kernels::simd::{level as simd_level, measured_peak_flops, set_cap as cap_simd_level};
