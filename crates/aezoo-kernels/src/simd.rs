//! Function multiversioning for the fused ops' element-wise kernels: the
//! same body compiled for AVX-512, for AVX2 + FMA and for the build's
//! baseline, the widest the CPU has picked at run time (as PyTorch's
//! `DispatchStub` does), so a release build without `-C target-cpu` still
//! runs its sigmoid, bias and activation-gradient loops 8 or 16 lanes wide.
//!
//! The body must be free of `unsafe`, take its outputs through `&mut`
//! arguments and return `()`; the kernels it calls must be `#[inline]` so
//! they are compiled into each version.

use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::OnceLock;

/// `multiversion! { fn name<T: Bound>(a: A, ..) { body } }` defines
/// `name`, which runs `body` through the widest version the CPU supports.
#[macro_export]
macro_rules! multiversion {
    ($(#[$m:meta])* $vis:vis fn $name:ident<$T:ident: $bound:path>($($a:ident: $t:ty),* $(,)?) $body:block) => {
        $(#[$m])*
        $vis fn $name<$T: $bound>($($a: $t),*) {
            #[inline(always)]
            fn base<$T: $bound>($($a: $t),*) $body
            #[cfg(target_arch = "x86_64")]
            {
                #[target_feature(enable = "avx512f,avx512vl,avx512bw,avx512dq,avx2,fma")]
                unsafe fn v4<$T: $bound>($($a: $t),*) {
                    base::<$T>($($a),*)
                }
                #[target_feature(enable = "avx2,fma")]
                unsafe fn v3<$T: $bound>($($a: $t),*) {
                    base::<$T>($($a),*)
                }
                match $crate::simd::level() {
                    // SAFETY: `level` saw AVX-512 F/VL/BW/DQ, AVX2 and FMA on this CPU.
                    2 => return unsafe { v4::<$T>($($a),*) },
                    // SAFETY: `level` saw AVX2 and FMA on this CPU.
                    1 => return unsafe { v3::<$T>($($a),*) },
                    _ => {}
                }
            }
            base::<$T>($($a),*)
        }
    };
}

static CAP: AtomicU8 = AtomicU8::new(u8::MAX);

/// 2 with AVX-512 (F, VL, BW, DQ) + AVX2 + FMA, 1 with AVX2 + FMA, else 0;
/// `AEZOO_SIMD=0|1|2` caps it (to compare versions, or to rule one out), as
/// does [`set_cap`].
pub fn level() -> u8 {
    static DETECTED: OnceLock<u8> = OnceLock::new();
    let detected = *DETECTED.get_or_init(|| {
        let cap = aezoo_env::level("AEZOO_SIMD").unwrap_or(2);
        detected().min(cap)
    });
    detected.min(CAP.load(Ordering::Relaxed))
}

/// Caps [`level`] for the whole process from now on (`u8::MAX` lifts the
/// cap). Every version computes the same bits — element-wise kernels with
/// no contracted multiply-adds and fixed reduction lanes — so changing it
/// while kernels run changes only their speed; the tests compare them.
pub fn set_cap(level: u8) {
    CAP.store(level, Ordering::Relaxed);
}

/// The widest version this CPU has, whatever the caps.
#[cfg(target_arch = "x86_64")]
pub fn detected() -> u8 {
    use std::arch::is_x86_feature_detected as has;
    let v3 = has!("avx2") && has!("fma");
    let v4 = v3 && has!("avx512f") && has!("avx512vl") && has!("avx512bw") && has!("avx512dq");
    if v4 {
        2
    } else {
        u8::from(v3)
    }
}

/// The widest version this CPU has: the baseline off x86-64.
#[cfg(not(target_arch = "x86_64"))]
pub fn detected() -> u8 {
    0
}

/// The f32 multiply-add rate this machine sustains, in FLOP/s, measured
/// rather than read off the clock: every rayon thread at once runs 12
/// independent chains of vector FMAs (enough to cover the FMA latency on
/// both pipes) of the widest version the CPU has for about `seconds`.
/// What a GEMM could reach at best; a VM's nominal `cpu MHz` says little
/// about its boost clock (one here: 2.45 GHz nominal, 3.2 GHz measured).
pub fn measured_peak_flops(seconds: f64) -> f64 {
    let per_thread = rayon::broadcast(|_| fma_rate(seconds));
    per_thread.iter().sum()
}

/// FLOP/s of one thread running [`fma_chains`] for about `seconds`.
fn fma_rate(seconds: f64) -> f64 {
    let mut iters = 1u64 << 16;
    loop {
        let t = std::time::Instant::now();
        let flops = fma_chains(iters);
        let dt = t.elapsed().as_secs_f64();
        if dt >= seconds || iters >= 1 << 40 {
            return flops / dt;
        }
        iters = (iters as f64 * (seconds / dt.max(1e-6)).clamp(2.0, 16.0)) as u64;
    }
}

/// `iters` rounds of 12 dependent-chain FMAs per vector register; returns
/// the FLOPs done (2 per lane per FMA).
fn fma_chains(iters: u64) -> f64 {
    #[cfg(target_arch = "x86_64")]
    {
        use std::arch::x86_64::*;
        use std::hint::black_box;
        #[target_feature(enable = "avx512f")]
        unsafe fn v4(iters: u64) -> f32 {
            let (x, y) = (_mm512_set1_ps(black_box(0.999_999)), _mm512_set1_ps(black_box(1e-7)));
            let mut acc: [__m512; 12] = std::array::from_fn(|i| _mm512_set1_ps(black_box(i as f32)));
            for _ in 0..iters {
                for a in acc.iter_mut() {
                    *a = _mm512_fmadd_ps(*a, x, y);
                }
            }
            acc.iter().map(|a| _mm512_reduce_add_ps(*a)).sum()
        }
        #[target_feature(enable = "avx2,fma")]
        unsafe fn v3(iters: u64) -> f32 {
            let (x, y) = (_mm256_set1_ps(black_box(0.999_999)), _mm256_set1_ps(black_box(1e-7)));
            let mut acc: [__m256; 12] = std::array::from_fn(|i| _mm256_set1_ps(black_box(i as f32)));
            for _ in 0..iters {
                for a in acc.iter_mut() {
                    *a = _mm256_fmadd_ps(*a, x, y);
                }
            }
            let mut out = [0f32; 8];
            let s = acc.iter().fold(_mm256_setzero_ps(), |s, a| _mm256_add_ps(s, *a));
            // SAFETY: `out` holds 8 floats.
            unsafe { _mm256_storeu_ps(out.as_mut_ptr(), s) };
            out.iter().sum()
        }
        match detected() {
            2 => {
                // SAFETY: the CPU has AVX-512F.
                black_box(unsafe { v4(iters) });
                return iters as f64 * 12.0 * 16.0 * 2.0;
            }
            1 => {
                // SAFETY: the CPU has AVX2 and FMA.
                black_box(unsafe { v3(iters) });
                return iters as f64 * 12.0 * 8.0 * 2.0;
            }
            _ => {}
        }
    }
    // Baseline: 4-lane multiplies and adds, 2 FLOPs per lane per round.
    let mut acc = [[0f32; 4]; 12];
    let (x, y) = (std::hint::black_box(0.999_999f32), std::hint::black_box(1e-7f32));
    for _ in 0..iters {
        for a in acc.iter_mut() {
            for v in a.iter_mut() {
                *v = *v * x + y;
            }
        }
    }
    std::hint::black_box(acc);
    iters as f64 * 12.0 * 4.0 * 2.0
}
