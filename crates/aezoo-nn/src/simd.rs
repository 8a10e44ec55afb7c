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
        let cap = std::env::var("AEZOO_SIMD")
            .ok()
            .and_then(|v| v.parse::<u8>().ok())
            .unwrap_or(2);
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
