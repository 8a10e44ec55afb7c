//! The scalar side of the kernels: the [`Float`] trait they are generic
//! over (f32 and f64), the fused activation [`Act`], and the libm-free
//! `exp`/`ln(1 + e)` of f32 that let element-wise loops vectorise (each
//! within a few ulp of the rounded f64 value, tested).

use candle_core::CpuStorage;

/// The activation fused into a layer's output.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Act {
    #[default]
    None,
    Relu,
    Sigmoid,
}

/// The float types the fused kernels run on.
pub trait Float:
    Copy
    + Default
    + Send
    + Sync
    + PartialOrd
    + std::ops::AddAssign
    + std::ops::Add<Output = Self>
    + std::ops::Sub<Output = Self>
    + std::ops::Mul<Output = Self>
    + 'static
{
    fn from_f64(v: f64) -> Self;
    fn to_f64(self) -> f64;
    const ONE: Self;
    fn sigmoid(self) -> Self;
    /// `e^−|x|`: with it, `softplus(x) = max(x, 0) + ln(1 + e^−|x|)` and
    /// `σ(x)` are stable for every `x` (f32: [`exp_f32`]).
    fn exp_neg_abs(self) -> Self;
    /// `ln(1 + e)` for `e` in `[0, 1]` to full relative precision (f32:
    /// [`ln_1p_unit_f32`]).
    fn ln_1p_unit(self) -> Self;
    fn storage(v: Vec<Self>) -> CpuStorage;
    fn slice(s: &CpuStorage) -> Option<&[Self]>;
    /// The same slice as f32, if `Self` is f32 (the [`crate::sgemm`] paths).
    fn as_f32(xs: &[Self]) -> Option<&[f32]>;
    fn as_f32_mut(xs: &mut [Self]) -> Option<&mut [f32]>;
}

impl Float for f32 {
    fn from_f64(v: f64) -> Self {
        v as f32
    }
    fn to_f64(self) -> f64 {
        self as f64
    }
    const ONE: Self = 1.0;
    fn sigmoid(self) -> Self {
        1.0 / (1.0 + exp_f32(-self))
    }
    fn exp_neg_abs(self) -> Self {
        exp_f32(-self.abs())
    }
    fn ln_1p_unit(self) -> Self {
        ln_1p_unit_f32(self)
    }
    fn storage(v: Vec<Self>) -> CpuStorage {
        CpuStorage::F32(v)
    }
    fn slice(s: &CpuStorage) -> Option<&[Self]> {
        match s {
            CpuStorage::F32(v) => Some(v),
            _ => None,
        }
    }
    fn as_f32(xs: &[Self]) -> Option<&[f32]> {
        Some(xs)
    }
    fn as_f32_mut(xs: &mut [Self]) -> Option<&mut [f32]> {
        Some(xs)
    }
}

impl Float for f64 {
    fn from_f64(v: f64) -> Self {
        v
    }
    fn to_f64(self) -> f64 {
        self
    }
    const ONE: Self = 1.0;
    fn sigmoid(self) -> Self {
        1.0 / (1.0 + (-self).exp())
    }
    fn exp_neg_abs(self) -> Self {
        (-self.abs()).exp()
    }
    fn ln_1p_unit(self) -> Self {
        self.ln_1p()
    }
    fn storage(v: Vec<Self>) -> CpuStorage {
        CpuStorage::F64(v)
    }
    fn slice(s: &CpuStorage) -> Option<&[Self]> {
        match s {
            CpuStorage::F64(v) => Some(v),
            _ => None,
        }
    }
    fn as_f32(_: &[Self]) -> Option<&[f32]> {
        None
    }
    fn as_f32_mut(_: &mut [Self]) -> Option<&mut [f32]> {
        None
    }
}

/// `ln(1 + e)` for `e` in `[0, 1]` without a libm call (glibc's `log1pf`
/// was a tenth of `vae-mlp`'s training samples): `2·atanh(s)` with
/// `s = e / (2 + e) ≤ ⅓`, its odd series to `s¹⁵` (truncation below 5·10⁻¹⁰),
/// so it keeps full relative precision for tiny `e` (within 3 ulp of the
/// rounded f64 value, `ln_1p_unit_f32_is_within_3_ulp`) and vectorises.
#[inline]
pub fn ln_1p_unit_f32(e: f32) -> f32 {
    let s = e / (2.0 + e);
    let s2 = s * s;
    let mut p = 1.0 / 15.0;
    for c in [1.0 / 13.0, 1.0 / 11.0, 1.0 / 9.0, 1.0 / 7.0, 1.0 / 5.0, 1.0 / 3.0, 1.0] {
        p = p * s2 + c;
    }
    2.0 * s * p
}

/// The constants of [`exp_f32`], shared with `sgemm`'s vector sigmoid
/// (which must compute the same bits).
pub(crate) mod exp_consts {
    pub(crate) const LOG2E: f32 = std::f32::consts::LOG2_E;
    // ln 2 = LN2_HI + LN2_LO (Cephes), LN2_HI with 9 significant bits so
    // that n·LN2_HI is exact for |n| ≤ 127.
    pub(crate) const LN2_HI: f32 = 0.693_359_4;
    pub(crate) const LN2_LO: f32 = -2.121_944_4e-4;
    /// Adding and subtracting 1.5·2²³ rounds to the nearest integer.
    pub(crate) const ROUND: f32 = 12_582_912.0;
}

/// `eᵡ` in f32 without a libm call, so that a loop of sigmoids vectorises
/// (the scalar `expf` was most of a sigmoid layer's time): `x = n·ln2 + r`
/// with `|r| ≤ ln2/2`, `eʳ` by its degree-7 Taylor polynomial (truncation
/// below 2·10⁻⁹), `2ⁿ` by the exponent bits; clamped to f32's range. Within
/// 2 ulp of `f64::exp` over `[-87, 88]` (test `exp_f32_is_within_2_ulp`).
#[inline(always)]
pub fn exp_f32(x: f32) -> f32 {
    use exp_consts::{LN2_HI, LN2_LO, LOG2E, ROUND};
    let x = x.clamp(-87.0, 88.0);
    let t = x * LOG2E + ROUND;
    let n = t - ROUND;
    let r = (x - n * LN2_HI) - n * LN2_LO;
    let p = 1.0
        + r * (1.0
            + r * (0.5
                + r * (1.0 / 6.0 + r * (1.0 / 24.0 + r * (1.0 / 120.0 + r * (1.0 / 720.0 + r * (1.0 / 5040.0)))))));
    // `t`'s bits are ROUND's plus n (its ulp is 1): 2ⁿ from integer ops
    // alone (`n as i32` is a saturating scalar conversion that stops the
    // loop from vectorising).
    let two_n = f32::from_bits((t.to_bits().wrapping_sub(ROUND.to_bits()).wrapping_add(127)) << 23);
    p * two_n
}

/// The sum of `xs` in 16 lanes (a single running sum is one dependent add
/// per element; lanes let the compiler vectorise).
#[inline]
pub(crate) fn sum<T: Float>(xs: &[T]) -> T {
    let mut lanes = [T::default(); 16];
    let mut chunks = xs.chunks_exact(16);
    for c in &mut chunks {
        for (a, &v) in lanes.iter_mut().zip(c) {
            *a += v;
        }
    }
    let mut s = T::default();
    for &v in chunks.remainder() {
        s += v;
    }
    for a in lanes {
        s += a;
    }
    s
}

/// `max(z, 0)`, with NaN mapped to 0 as a select (vectorises).
#[inline(always)]
pub(crate) fn relu_of<T: Float>(z: T) -> T {
    if z > T::default() {
        z
    } else {
        T::default()
    }
}

/// `d · act'` at an output whose activated value is `y`.
#[inline(always)]
pub(crate) fn act_grad_at<T: Float>(y: T, d: T, act: Act) -> T {
    match act {
        Act::None => d,
        Act::Relu => {
            if y > T::default() {
                d
            } else {
                T::default()
            }
        }
        Act::Sigmoid => d * (y * (T::ONE - y)),
    }
}
