//! f32 matrix products for the fused layers, in the loop structure of BLIS
//! (Goto & van de Geijn 2008, "Anatomy of high-performance matrix
//! multiplication"; Van Zee & van de Geijn 2015): `B` packed once into
//! panels of `NR` columns that every thread reads, `A` read in place through
//! its strides (no packing: one broadcast load per element and k step), a
//! `6 × NR` register tile (`NR` = two vectors: 16 with AVX2, 32 with
//! AVX-512), and an [`Epilogue`] — accumulate, bias per row or per column,
//! activation — applied to each tile of `C` while it is still in cache.
//!
//! Why not the `gemm` crate alone: on the shapes of these models both reach
//! ~90 % of the FMA peak inside one call, but the crate packs `B` again for
//! every call and every thread, and a bias or activation after it is another
//! pass over `C` (a sigmoid over a 1000 × 784 output cost more than the
//! product). The crate stays for f64 and for CPUs without FMA.
//!
//! Every tile sums its `k` products in the same order, in blocks of the
//! same length, at every vector width: AVX2 and AVX-512 runs compute the
//! same bits.

use std::ops::Range;

use rayon::prelude::*;

use crate::float::Act;

/// Rows of `C` in a register tile.
pub const MR: usize = 6;
/// Longest `k` block: a `KC_MAX × NR` panel of `B` is 18 KiB (AVX2) or
/// 36 KiB (AVX-512), read from L1 by every tile of a column of tiles; 288
/// keeps a 3 × 3 convolution over 32 channels in one block (no partial sums
/// stored and reloaded, which costs most with a transposed `C`).
const KC_MAX: usize = 288;
/// Rows of `A` a task works through per `k` block, kept in L2
/// (`96 × 288 × 4` bytes).
const MC: usize = 96;
/// Packing `B` runs on all threads from this many elements.
const PAR_PACK: usize = 1 << 16;

/// A read-only matrix: element `(i, j)` at `data[i·rs + j·cs]`.
#[derive(Clone, Copy, Debug)]
pub struct Strided<'a> {
    pub data: &'a [f32],
    pub rs: usize,
    pub cs: usize,
}

impl<'a> Strided<'a> {
    pub fn new(data: &'a [f32], rs: usize, cs: usize) -> Self {
        Self { data, rs, cs }
    }
}

/// How the rows or the `k` steps of `A` are addressed: a stride, or a
/// table of offsets (an unfolded image read in place: row `l` of a
/// convolution's `colsᵀ` is pixel `l` of the padded image, step `p` the
/// offset of tap `p`).
#[derive(Clone, Copy, Debug)]
pub enum Index<'a> {
    Stride(usize),
    Table(&'a [usize]),
}

impl Index<'_> {
    #[inline(always)]
    fn at(&self, i: usize) -> usize {
        match self {
            Index::Stride(s) => i * s,
            Index::Table(t) => t[i],
        }
    }

    /// The largest offset among the first `n` (none for `n = 0`).
    fn max(&self, n: usize) -> Option<usize> {
        match self {
            _ if n == 0 => None,
            Index::Stride(s) => Some((n - 1) * s),
            Index::Table(t) => {
                assert!(t.len() >= n, "sgemm: an index table is shorter than its dimension");
                t[..n].iter().copied().max()
            }
        }
    }
}

/// The left operand: element `(i, p)` at `data[rows.at(i) + cols.at(p)]`.
#[derive(Clone, Copy, Debug)]
pub struct Lhs<'a> {
    pub data: &'a [f32],
    pub rows: Index<'a>,
    pub cols: Index<'a>,
}

impl<'a> From<Strided<'a>> for Lhs<'a> {
    fn from(a: Strided<'a>) -> Self {
        Lhs {
            data: a.data,
            rows: Index::Stride(a.rs),
            cols: Index::Stride(a.cs),
        }
    }
}

/// What becomes of a finished tile: `C = act([C +] A·B [+ row_bias[i]] [+
/// col_bias[j]])`.
#[derive(Clone, Copy, Debug, Default)]
pub struct Epilogue<'a> {
    /// Add the product to what `C` holds (else `C` is only written).
    pub accumulate: bool,
    /// One value per row of `C` (a convolution's bias, `C` = channels × pixels).
    pub row_bias: Option<&'a [f32]>,
    /// One value per column of `C` (a linear layer's bias, `C` = batch × features).
    pub col_bias: Option<&'a [f32]>,
    pub act: Act,
}

impl Epilogue<'static> {
    /// `C += A·B`, nothing else (the weight gradients summed over images).
    pub const ACCUMULATE: Self = Epilogue {
        accumulate: true,
        row_bias: None,
        col_bias: None,
        act: Act::None,
    };
}

/// Whether this CPU runs these kernels (AVX2 + FMA at least, and not capped
/// below that by `AEZOO_SIMD`) and they are not turned off
/// (`AEZOO_NO_SGEMM=1`); otherwise callers use the `gemm` crate.
pub fn available() -> bool {
    static OFF: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    let off = *OFF.get_or_init(|| aezoo_env::flag("AEZOO_NO_SGEMM"));
    !off && crate::simd::level() >= 1
}

/// `B` (`k × n`) in panels of `nr` columns, `k` in blocks of at most
/// [`KC_MAX`]: block `b` starts at `p0 = b·kc`, holds `len = min(kc, k − p0)`
/// rows, and sits at `p0 · n_pad`; panel `j` of it at `+ j·len·nr`, element
/// `(p, c)` of the panel at `+ p·nr + c`; columns past `n` are zero.
#[derive(Debug)]
pub struct PackedB {
    data: Vec<f32>,
    k: usize,
    n: usize,
    kc: usize,
    nr: usize,
    /// The SIMD level the panels were laid out for (1: AVX2, 2: AVX-512).
    level: u8,
}

/// The `k` block length for a product of depth `k`: blocks as even as
/// possible, none longer than [`KC_MAX`].
fn kc_for(k: usize) -> usize {
    k.div_ceil(k.div_ceil(KC_MAX).max(1)).max(1)
}

/// Fills one panel (`len = panel.len() / nr` rows of `B` from `p0`,
/// columns `j0..j0 + cols`; the rest stays zero).
///
/// # Safety
/// Every `(p0 + p, j0 + c)` with `p < len`, `c < cols` must lie inside
/// `b.data` through its strides, and AVX2 must be available.
unsafe fn fill_panel(b: Strided, p0: usize, j0: usize, cols: usize, nr: usize, panel: &mut [f32]) {
    let len = panel.len() / nr;
    let base = p0 * b.rs + j0 * b.cs;
    if b.cs == 1 && cols == nr {
        // Rows of `B` are contiguous: one fixed-length copy per row.
        for (p, out) in panel.chunks_exact_mut(nr).enumerate() {
            out.copy_from_slice(&b.data[base + p * b.rs..base + p * b.rs + nr]);
        }
    } else if b.rs == 1 && cols == nr {
        // Columns of `B` are contiguous (a transposed weight): 8 × 8
        // blocks transposed in registers.
        #[cfg(target_arch = "x86_64")]
        // SAFETY: the caller's contract.
        unsafe {
            x86::transpose_panel(b.data.as_ptr().add(base), b.cs, len, nr, panel.as_mut_ptr())
        }
        #[cfg(not(target_arch = "x86_64"))]
        unreachable!()
    } else {
        for p in 0..len {
            for c in 0..cols {
                panel[p * nr + c] = b.data[base + p * b.rs + c * b.cs];
            }
            panel[p * nr + cols..(p + 1) * nr].fill(0.0);
        }
    }
}

thread_local! {
    /// The last packing buffer this thread freed, for the next product:
    /// a fresh one would be zeroed (or page-faulted) on every call.
    static SPARE: std::cell::RefCell<Vec<f32>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// A buffer of `len` floats (contents unspecified), the thread's spare if
/// it is large enough.
fn take_buffer(len: usize) -> Vec<f32> {
    let mut v = SPARE.with(|s| std::mem::take(&mut *s.borrow_mut()));
    if v.capacity() < len {
        v = Vec::with_capacity(len);
    }
    v.resize(len, 0.0);
    v.truncate(len);
    v
}

impl Drop for PackedB {
    fn drop(&mut self) {
        let v = std::mem::take(&mut self.data);
        SPARE.with(|s| {
            let mut s = s.borrow_mut();
            if v.capacity() > s.capacity() {
                *s = v;
            }
        });
    }
}

impl PackedB {
    /// Packs `b` (`k × n`) for the widest kernels the CPU has within the
    /// current cap (AVX2 at least, even if the cap moved below it since a
    /// caller checked [`available`]). Panics on a CPU without AVX2 + FMA.
    pub fn pack(k: usize, n: usize, b: Strided) -> Self {
        assert!(crate::simd::detected() >= 1, "sgemm: no AVX2 + FMA on this CPU");
        let level = crate::simd::level().clamp(1, 2);
        let nr = if level == 2 { 32 } else { 16 };
        let kc = kc_for(k);
        let n_pad = n.next_multiple_of(nr);
        // Every element is written below (padding columns with zeros).
        let mut data = take_buffer(k * n_pad);
        if k > 0 && n > 0 {
            assert!((k - 1) * b.rs + (n - 1) * b.cs < b.data.len(), "sgemm: b too short");
        }
        // One job per (block, panel); the panels are disjoint slices.
        let mut jobs: Vec<(usize, usize, &mut [f32])> = Vec::new();
        let mut rest = data.as_mut_slice();
        let mut p0 = 0;
        while p0 < k {
            let len = kc.min(k - p0);
            for j in 0..n_pad / nr {
                let (panel, tail) = rest.split_at_mut(len * nr);
                jobs.push((p0, j * nr, panel));
                rest = tail;
            }
            p0 += len;
        }
        let fill = |(p0, j0, panel): (usize, usize, &mut [f32])| {
            let cols = nr.min(n - j0.min(n));
            // SAFETY: `assert!` above bounds every element the strides reach.
            unsafe { fill_panel(b, p0, j0, cols, nr, panel) }
        };
        if k * n >= PAR_PACK && rayon::current_num_threads() > 1 {
            crate::pool::keep_warm();
            jobs.into_par_iter().for_each(fill);
        } else {
            jobs.into_iter().for_each(fill);
        }
        Self {
            data,
            k,
            n,
            kc,
            nr,
            level,
        }
    }

    pub fn k(&self) -> usize {
        self.k
    }

    pub fn n(&self) -> usize {
        self.n
    }
}

/// `dst[j·rows + i] (+)= src[i·cols + j]`: the transpose of a `rows ×
/// cols` matrix, added into `dst` if `add` — a layout change of the
/// convolutions' unfolding (channels-first ↔ channels-last), in 8 × 8
/// register blocks with AVX2 (a scalar loop's strided stores were most of
/// the unfolding's time), element by element elsewhere.
pub fn transpose(src: &[f32], rows: usize, cols: usize, dst: &mut [f32], add: bool) {
    assert!(
        src.len() >= rows * cols && dst.len() >= rows * cols,
        "sgemm::transpose: a slice is too short"
    );
    // The rows and columns the 8 × 8 blocks covered.
    #[cfg(target_arch = "x86_64")]
    let (r8, c8) = if crate::simd::level() >= 1 {
        // SAFETY: the assert bounds every index; AVX2 was detected.
        unsafe { x86::transpose_blocks(src.as_ptr(), rows, cols, dst.as_mut_ptr(), add) };
        (rows / 8 * 8, cols / 8 * 8)
    } else {
        (0, 0)
    };
    #[cfg(not(target_arch = "x86_64"))]
    let (r8, c8) = (0, 0);
    // What the blocks left: the rows past the last block of 8, and the
    // columns past it in the rows the blocks covered.
    let mut one = |i: usize, j: usize| {
        let v = src[i * cols + j];
        let d = &mut dst[j * rows + i];
        *d = if add { *d + v } else { v };
    };
    for i in 0..rows {
        for j in if i < r8 { c8 } else { 0 }..cols {
            one(i, j);
        }
    }
}

/// A raw pointer to `C` that tasks share; each writes its own rows.
#[derive(Clone, Copy)]
struct CPtr(*mut f32);
// SAFETY: tasks write disjoint tiles of `C` (see `gemm_packed`).
unsafe impl Send for CPtr {}
// SAFETY: as above.
unsafe impl Sync for CPtr {}

/// `C (m × n) = epilogue(A (m × k) · B)` for packed `B`; element `(i, j)`
/// of `C` at `c[i·c_rs + j·c_cs]` (tiles are stored directly when
/// `c_cs == 1`, through a stack buffer otherwise: a transposed `C`, one
/// tile at a time); `parallel` splits the rows (or, for few rows, the
/// panels) into one task per thread or more.
pub fn gemm_packed<'a>(
    m: usize,
    a: impl Into<Lhs<'a>>,
    pb: &PackedB,
    c: &mut [f32],
    cs: (usize, usize),
    epi: &Epilogue,
    parallel: bool,
) {
    // SAFETY: `c` is an initialised slice of its own length.
    unsafe { gemm_packed_raw(m, a, pb, c.as_mut_ptr(), c.len(), cs, epi, parallel) }
}

/// [`gemm_packed`] into `c_len` floats at `c`, which may be uninitialised
/// unless `epi.accumulate`: every element of `C` is written before it is
/// read (a fresh output needs no zeroing pass).
///
/// # Safety
/// `c` must be valid for reads and writes of `c_len` floats, not aliased
/// meanwhile, and initialised if `epi.accumulate`.
#[allow(clippy::too_many_arguments)]
pub unsafe fn gemm_packed_raw<'a>(
    m: usize,
    a: impl Into<Lhs<'a>>,
    pb: &PackedB,
    c: *mut f32,
    c_len: usize,
    (c_rs, c_cs): (usize, usize),
    epi: &Epilogue,
    parallel: bool,
) {
    let a: Lhs = a.into();
    let (k, n) = (pb.k, pb.n);
    if m == 0 || n == 0 {
        return;
    }
    assert!((m - 1) * c_rs + (n - 1) * c_cs < c_len, "sgemm: c too short");
    if k > 0 {
        let far = a.rows.max(m).unwrap_or(0) + a.cols.max(k).unwrap_or(0);
        assert!(far < a.data.len(), "sgemm: a too short");
    }
    if let Some(b) = epi.row_bias {
        assert!(b.len() >= m, "sgemm: row bias too short");
    }
    if let Some(b) = epi.col_bias {
        assert!(b.len() >= n, "sgemm: column bias too short");
    }
    let cp = CPtr(c);
    let panels = n.div_ceil(pb.nr);
    let threads = if parallel { rayon::current_num_threads() } else { 1 };
    if threads > 1 {
        crate::pool::keep_warm();
    }
    // SAFETY (all calls below): the asserts bound every index the strides
    // reach; tasks cover disjoint rows × panels of `C`.
    if threads <= 1 || m * n * k.max(1) < 1 << 15 {
        unsafe { run(pb, a, cp, (c_rs, c_cs), epi, 0..m, 0..panels) };
    } else if m.div_ceil(MR) >= 2 * threads || m.div_ceil(MR) >= panels {
        // Rows: whole tiles per task, about MC rows each, at least one
        // task per thread.
        let tasks = m.div_ceil(MC).max(threads);
        let per = m.div_ceil(tasks).next_multiple_of(MR);
        (0..m.div_ceil(per)).into_par_iter().for_each(|t| {
            let rows = t * per..((t + 1) * per).min(m);
            unsafe { run(pb, a, cp, (c_rs, c_cs), epi, rows, 0..panels) };
        });
    } else {
        let per = panels.div_ceil(threads);
        (0..panels.div_ceil(per)).into_par_iter().for_each(|t| {
            let cols = t * per..((t + 1) * per).min(panels);
            unsafe { run(pb, a, cp, (c_rs, c_cs), epi, 0..m, cols) };
        });
    }
}

/// Dispatches to the kernels of the level `pb` was packed for.
///
/// # Safety
/// `a`, `c` (through `cp`, `c_rs`) and the biases must cover `rows` ×
/// `panels` as `gemm_packed` asserts, and no other thread may touch those
/// tiles of `C` meanwhile.
unsafe fn run(
    pb: &PackedB,
    a: Lhs,
    cp: CPtr,
    cs: (usize, usize),
    epi: &Epilogue,
    rows: Range<usize>,
    panels: Range<usize>,
) {
    #[cfg(target_arch = "x86_64")]
    {
        #[target_feature(enable = "avx512f,avx2,fma")]
        unsafe fn v4(
            pb: &PackedB,
            a: Lhs,
            cp: CPtr,
            cs: (usize, usize),
            epi: &Epilogue,
            rows: Range<usize>,
            panels: Range<usize>,
        ) {
            // SAFETY: the caller's contract.
            unsafe { blocks::<x86::V16>(pb, a, cp, cs, epi, rows, panels) }
        }
        #[target_feature(enable = "avx2,fma")]
        unsafe fn v3(
            pb: &PackedB,
            a: Lhs,
            cp: CPtr,
            cs: (usize, usize),
            epi: &Epilogue,
            rows: Range<usize>,
            panels: Range<usize>,
        ) {
            // SAFETY: the caller's contract.
            unsafe { blocks::<x86::V8>(pb, a, cp, cs, epi, rows, panels) }
        }
        // SAFETY: `PackedB::pack` chose the level from the CPU's features.
        match pb.level {
            2 => unsafe { v4(pb, a, cp, cs, epi, rows, panels) },
            _ => unsafe { v3(pb, a, cp, cs, epi, rows, panels) },
        }
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        let _ = (pb, a, cp, cs, epi, rows, panels);
        unreachable!("sgemm: PackedB::pack refuses CPUs without AVX2")
    }
}

/// The `k` steps of a tile's rows of `A`: a stride, or a table of offsets
/// (from the block's first step on).
#[derive(Clone, Copy)]
enum KOff {
    Stride(usize),
    Table(*const usize),
}

/// What a tile does with `C` and the epilogue in one `k` block.
#[derive(Clone, Copy)]
struct Mode<'a> {
    /// Add what `C` holds (a later block, or an accumulating product).
    load: bool,
    /// The last block: add the biases and apply the activation.
    last: bool,
    row_bias: Option<&'a [f32]>,
    col_bias: Option<&'a [f32]>,
    act: Act,
}

/// The loops around the register tile: for each band of [`MC`] rows, each
/// `k` block, each panel of `B` (in L1 while the band's tiles pass over it)
/// and each tile of rows.
#[inline(always)]
unsafe fn blocks<V: Vector>(
    pb: &PackedB,
    a: Lhs,
    cp: CPtr,
    cs: (usize, usize),
    epi: &Epilogue,
    rows: Range<usize>,
    panels: Range<usize>,
) {
    let (k, n, nr) = (pb.k, pb.n, pb.nr);
    debug_assert_eq!(nr, 2 * V::LANES);
    let n_pad = n.next_multiple_of(nr);
    let mut band = rows.start;
    while band < rows.end {
        let band_end = (band + MC).min(rows.end);
        // The k blocks; a product with k = 0 is one empty block, whose
        // epilogue still writes C (bias and activation of zero).
        let mut p0 = 0;
        loop {
            let len = pb.kc.min(k - p0);
            let mode = Mode {
                load: p0 > 0 || epi.accumulate,
                last: p0 + len == k,
                row_bias: epi.row_bias,
                col_bias: epi.col_bias,
                act: epi.act,
            };
            for jp in panels.clone() {
                // SAFETY: panel `jp` of block `p0` lies inside `pb.data`.
                let bp = unsafe { pb.data.as_ptr().add(p0 * n_pad + jp * len * nr) };
                let mut i = band;
                while i < band_end {
                    let r = MR.min(band_end - i);
                    // SAFETY: the caller's contract: rows `i..i + r` of `A`
                    // from column `p0` on, and of `C`.
                    let (ap, koff) = match a.cols {
                        Index::Stride(cs) => (unsafe { a.data.as_ptr().add(p0 * cs) }, KOff::Stride(cs)),
                        Index::Table(t) => (a.data.as_ptr(), KOff::Table(unsafe { t.as_ptr().add(p0) })),
                    };
                    // (An empty block reads no row of `A`.)
                    let mut rows = [ap; MR];
                    for (q, row) in rows.iter_mut().enumerate().take(if len > 0 { r } else { 0 }) {
                        *row = unsafe { ap.add(a.rows.at(i + q)) };
                    }
                    unsafe { tile_any::<V>(r, len, rows, koff, bp, cp, cs, i, jp * nr, n, mode) };
                    i += MR;
                }
            }
            p0 += len;
            if p0 >= k {
                break;
            }
        }
        band = band_end;
    }
}

/// One tile of `r ≤ MR` rows at `(i0, j0)`, through a stack buffer when
/// the panel is cut by the edge of `C` or `C`'s columns are not contiguous.
#[inline(always)]
#[allow(clippy::too_many_arguments)]
unsafe fn tile_any<V: Vector>(
    r: usize,
    kc: usize,
    a: [*const f32; MR],
    koff: KOff,
    b: *const f32,
    cp: CPtr,
    (c_rs, c_cs): (usize, usize),
    i0: usize,
    j0: usize,
    n: usize,
    mode: Mode,
) {
    let nr = 2 * V::LANES;
    let cols = nr.min(n - j0);
    // SAFETY (all below): `(i0, j0)` with `r` rows and `cols` columns lies
    // inside `C` (the caller's contract).
    let c = unsafe { cp.0.add(i0 * c_rs + j0 * c_cs) };
    let row_bias = mode.row_bias.map(|b| &b[i0..i0 + r]);
    if cols == nr && c_cs == 1 {
        let col_bias = mode.col_bias.map(|b| &b[j0..j0 + nr]);
        unsafe { tile_rows::<V>(r, kc, a, koff, b, c, c_rs, mode, row_bias, col_bias) };
        return;
    }
    // The tile in a buffer of full width (the zero columns of an edge
    // panel give zeros there), `C` copied in and the valid part out.
    let mut buf = [0f32; MR * 32];
    let mut bias = [0f32; 32];
    // Element (i, j) of the tile in `C`.
    let at = |i: usize, j: usize| i * c_rs + j * c_cs;
    let copy = |to_c: bool, buf: &mut [f32; MR * 32]| {
        // A transposed `C` through 8 × 8 register transposes, any other
        // element by element.
        #[cfg(target_arch = "x86_64")]
        if c_rs == 1 {
            // SAFETY: the tile's elements of `C` are in bounds; AVX2 (the
            // kernels' level).
            unsafe { x86::transposed(to_c, buf.as_mut_ptr(), nr, r, cols, c, c_cs) };
            return;
        }
        for i in 0..r {
            for j in 0..cols {
                unsafe { copy_one(to_c, c.add(at(i, j)), &mut buf[i * nr + j]) };
            }
        }
    };
    if mode.load {
        copy(false, &mut buf);
    }
    let col_bias = mode.col_bias.map(|b| {
        bias[..cols].copy_from_slice(&b[j0..j0 + cols]);
        &bias[..nr]
    });
    unsafe { tile_rows::<V>(r, kc, a, koff, b, buf.as_mut_ptr(), nr, mode, row_bias, col_bias) };
    copy(true, &mut buf);
}

/// `*c = *t` (`to_c`) or `*t = *c`.
#[inline(always)]
unsafe fn copy_one(to_c: bool, c: *mut f32, t: &mut f32) {
    // SAFETY: the caller passes an element of `C`.
    unsafe {
        if to_c {
            *c = *t;
        } else {
            *t = *c;
        }
    }
}

/// The tile for a run-time row count: one monomorphised kernel per count.
#[inline(always)]
#[allow(clippy::too_many_arguments)]
unsafe fn tile_rows<V: Vector>(
    r: usize,
    kc: usize,
    a: [*const f32; MR],
    koff: KOff,
    b: *const f32,
    c: *mut f32,
    c_rs: usize,
    mode: Mode,
    row_bias: Option<&[f32]>,
    col_bias: Option<&[f32]>,
) {
    // SAFETY: forwarded contract of `tile_any`.
    unsafe {
        match r {
            6 => tile::<V, 6>(kc, a, koff, b, c, c_rs, mode, row_bias, col_bias),
            5 => tile::<V, 5>(kc, a, koff, b, c, c_rs, mode, row_bias, col_bias),
            4 => tile::<V, 4>(kc, a, koff, b, c, c_rs, mode, row_bias, col_bias),
            3 => tile::<V, 3>(kc, a, koff, b, c, c_rs, mode, row_bias, col_bias),
            2 => tile::<V, 2>(kc, a, koff, b, c, c_rs, mode, row_bias, col_bias),
            _ => tile::<V, 1>(kc, a, koff, b, c, c_rs, mode, row_bias, col_bias),
        }
    }
}

/// The register tile: `R` rows × two vectors of `C`, `kc` rank-1 updates
/// (step `p` of row `i` of `A` broadcast from `a[i]` plus the step's
/// offset — `p·stride` or `table[p]` — a row of the panel loaded from
/// `b + p·2·LANES`), then the epilogue, storing into `c` (row stride
/// `c_rs`, full width).
#[inline(always)]
#[allow(clippy::too_many_arguments)]
unsafe fn tile<V: Vector, const R: usize>(
    kc: usize,
    a: [*const f32; MR],
    koff: KOff,
    b: *const f32,
    c: *mut f32,
    c_rs: usize,
    mode: Mode,
    row_bias: Option<&[f32]>,
    col_bias: Option<&[f32]>,
) {
    let l = V::LANES;
    // SAFETY (all below): the caller's contract covers `kc` steps of `R`
    // rows of `A`, `kc` rows of the panel and the `R × 2·LANES` tile of `c`.
    unsafe {
        let mut acc = [[V::zero(); 2]; R];
        let mut rows = [a[0]; R];
        rows.copy_from_slice(&a[..R]);
        let mut bp = b;
        match koff {
            KOff::Stride(cs) => {
                // One offset for every row (base + index addressing).
                let mut off = 0usize;
                for _ in 0..kc {
                    let b0 = V::load(bp);
                    let b1 = V::load(bp.add(l));
                    for i in 0..R {
                        let av = V::splat(rows[i].add(off));
                        acc[i][0] = V::fma(av, b0, acc[i][0]);
                        acc[i][1] = V::fma(av, b1, acc[i][1]);
                    }
                    off += cs;
                    bp = bp.add(2 * l);
                }
            }
            KOff::Table(t) => {
                for p in 0..kc {
                    let off = *t.add(p);
                    let b0 = V::load(bp);
                    let b1 = V::load(bp.add(l));
                    for i in 0..R {
                        let av = V::splat(rows[i].add(off));
                        acc[i][0] = V::fma(av, b0, acc[i][0]);
                        acc[i][1] = V::fma(av, b1, acc[i][1]);
                    }
                    bp = bp.add(2 * l);
                }
            }
        }
        for (i, acc) in acc.iter_mut().enumerate() {
            let row = c.add(i * c_rs);
            if mode.load {
                acc[0] = V::load(row).add(acc[0]);
                acc[1] = V::load(row.add(l)).add(acc[1]);
            }
            if mode.last {
                if let Some(bias) = row_bias {
                    let s = V::set1(bias[i]);
                    acc[0] = acc[0].add(s);
                    acc[1] = acc[1].add(s);
                }
                if let Some(bias) = col_bias {
                    acc[0] = acc[0].add(V::load(bias.as_ptr()));
                    acc[1] = acc[1].add(V::load(bias.as_ptr().add(l)));
                }
                if mode.act == Act::Relu {
                    acc[0] = acc[0].relu();
                    acc[1] = acc[1].relu();
                }
            }
        }
        if mode.last && mode.act == Act::Sigmoid {
            sigmoid(&mut acc);
        }
        for (i, acc) in acc.iter().enumerate() {
            let row = c.add(i * c_rs);
            acc[0].store(row);
            acc[1].store(row.add(l));
        }
    }
}

/// `σ(x) = 1 / (1 + e^−x)` for every lane of a tile, the operations of
/// [`crate::exp_f32`] and `Float::sigmoid` one by one (no fused
/// multiply-adds), so it gives their bits. Each step runs over the whole
/// tile before the next, so the tile's independent chains (about 80 cycles
/// of latency each) overlap: row by row, the sigmoid cost a third of a
/// 128 → 784 layer.
#[inline(always)]
unsafe fn sigmoid<V: Vector, const R: usize>(tile: &mut [[V; 2]; R]) {
    use crate::float::exp_consts::{LN2_HI, LN2_LO, LOG2E, ROUND};
    // SAFETY: the vector operations of the kernel's instruction set.
    unsafe {
        let c = |v: f32| V::set1(v);
        let mut t = *tile;
        let mut r = *tile;
        // x = clamp(−x); t = x·log₂e + round; r = x − n·ln2 (n = t − round).
        for i in 0..R {
            for j in 0..2 {
                let x = tile[i][j].neg().clamp(-87.0, 88.0);
                t[i][j] = x.mul(c(LOG2E)).add(c(ROUND));
                let n = t[i][j].sub(c(ROUND));
                r[i][j] = x.sub(n.mul(c(LN2_HI))).sub(n.mul(c(LN2_LO)));
                tile[i][j] = r[i][j].mul(c(1.0 / 5040.0));
            }
        }
        // p = r·(1 + r·(½ + … r/5040)), Horner from the inside.
        for k in [1.0 / 720.0, 1.0 / 120.0, 1.0 / 24.0, 1.0 / 6.0, 0.5, 1.0] {
            for i in 0..R {
                for j in 0..2 {
                    tile[i][j] = r[i][j].mul(c(k).add(tile[i][j]));
                }
            }
        }
        // e^−x = (1 + p)·2ⁿ, σ = 1 / (1 + e^−x).
        for i in 0..R {
            for j in 0..2 {
                let e = c(1.0).add(tile[i][j]).mul(t[i][j].pow2_of_rounded(ROUND.to_bits()));
                tile[i][j] = c(1.0).div(c(1.0).add(e));
            }
        }
    }
}

/// The few vector operations the kernel needs, for each instruction set.
trait Vector: Copy {
    const LANES: usize;
    unsafe fn zero() -> Self;
    /// All lanes = `*p`.
    unsafe fn splat(p: *const f32) -> Self;
    unsafe fn set1(x: f32) -> Self;
    unsafe fn load(p: *const f32) -> Self;
    unsafe fn store(self, p: *mut f32);
    /// `a·b + c`, one rounding.
    unsafe fn fma(a: Self, b: Self, c: Self) -> Self;
    unsafe fn add(self, o: Self) -> Self;
    /// `max(x, 0)` with NaN → 0 (as `float::relu_of`).
    unsafe fn relu(self) -> Self;
    unsafe fn sub(self, o: Self) -> Self;
    unsafe fn mul(self, o: Self) -> Self;
    unsafe fn div(self, o: Self) -> Self;
    /// `−x` (the sign bit flipped).
    unsafe fn neg(self) -> Self;
    /// `f32::clamp` lane by lane (NaN stays NaN).
    unsafe fn clamp(self, lo: f32, hi: f32) -> Self;
    /// `2ⁿ` from `t = n + round` (bits `round_bits + n`): `(bits(t) −
    /// round_bits + 127) << 23` as integers, wrapping.
    unsafe fn pow2_of_rounded(self, round_bits: u32) -> Self;
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use std::arch::x86_64::*;

    use super::Vector;

    /// `out[p·nr + c] = src[p + c·cs]` for `p < len`, `c < nr` (`nr` a
    /// multiple of 8): 8 × 8 blocks through AVX2 shuffles, the rows past
    /// the last full block of 8 one by one.
    ///
    /// # Safety
    /// `src` must hold every `p + c·cs`, `out` `len·nr` floats; AVX2.
    #[target_feature(enable = "avx2")]
    pub(super) unsafe fn transpose_panel(src: *const f32, cs: usize, len: usize, nr: usize, out: *mut f32) {
        // SAFETY (all below): within the bounds the caller guarantees.
        unsafe {
            let full = len / 8 * 8;
            for c0 in (0..nr).step_by(8) {
                let col = |c: usize| src.add((c0 + c) * cs);
                let mut p = 0;
                while p < full {
                    let rows = transpose8(std::array::from_fn(|c| _mm256_loadu_ps(col(c).add(p))));
                    for (q, v) in rows.iter().enumerate() {
                        _mm256_storeu_ps(out.add((p + q) * nr + c0), *v);
                    }
                    p += 8;
                }
                for p in full..len {
                    for c in 0..8 {
                        *out.add(p * nr + c0 + c) = *col(c).add(p);
                    }
                }
            }
        }
    }

    /// The full 8 × 8 blocks of [`super::transpose`].
    ///
    /// # Safety
    /// `src` and `dst` must hold `rows·cols` floats; AVX2.
    #[target_feature(enable = "avx2")]
    pub(super) unsafe fn transpose_blocks(src: *const f32, rows: usize, cols: usize, dst: *mut f32, add: bool) {
        // SAFETY (all below): blocks inside the first rows/8·8 rows and
        // cols/8·8 columns.
        unsafe {
            for i0 in (0..rows / 8 * 8).step_by(8) {
                for j0 in (0..cols / 8 * 8).step_by(8) {
                    let t = transpose8(std::array::from_fn(|q| _mm256_loadu_ps(src.add((i0 + q) * cols + j0))));
                    for (q, v) in t.iter().enumerate() {
                        let at = dst.add((j0 + q) * rows + i0);
                        let v = if add {
                            _mm256_add_ps(_mm256_loadu_ps(at), *v)
                        } else {
                            *v
                        };
                        _mm256_storeu_ps(at, v);
                    }
                }
            }
        }
    }

    /// The transpose of an 8 × 8 block held as 8 rows.
    #[inline(always)]
    unsafe fn transpose8(r: [__m256; 8]) -> [__m256; 8] {
        // SAFETY: AVX (inlined into AVX2 functions only).
        unsafe {
            let t0 = _mm256_unpacklo_ps(r[0], r[1]);
            let t1 = _mm256_unpackhi_ps(r[0], r[1]);
            let t2 = _mm256_unpacklo_ps(r[2], r[3]);
            let t3 = _mm256_unpackhi_ps(r[2], r[3]);
            let t4 = _mm256_unpacklo_ps(r[4], r[5]);
            let t5 = _mm256_unpackhi_ps(r[4], r[5]);
            let t6 = _mm256_unpacklo_ps(r[6], r[7]);
            let t7 = _mm256_unpackhi_ps(r[6], r[7]);
            let u0 = _mm256_shuffle_ps::<0x44>(t0, t2);
            let u1 = _mm256_shuffle_ps::<0xEE>(t0, t2);
            let u2 = _mm256_shuffle_ps::<0x44>(t1, t3);
            let u3 = _mm256_shuffle_ps::<0xEE>(t1, t3);
            let u4 = _mm256_shuffle_ps::<0x44>(t4, t6);
            let u5 = _mm256_shuffle_ps::<0xEE>(t4, t6);
            let u6 = _mm256_shuffle_ps::<0x44>(t5, t7);
            let u7 = _mm256_shuffle_ps::<0xEE>(t5, t7);
            [
                _mm256_permute2f128_ps::<0x20>(u0, u4),
                _mm256_permute2f128_ps::<0x20>(u1, u5),
                _mm256_permute2f128_ps::<0x20>(u2, u6),
                _mm256_permute2f128_ps::<0x20>(u3, u7),
                _mm256_permute2f128_ps::<0x31>(u0, u4),
                _mm256_permute2f128_ps::<0x31>(u1, u5),
                _mm256_permute2f128_ps::<0x31>(u2, u6),
                _mm256_permute2f128_ps::<0x31>(u3, u7),
            ]
        }
    }

    /// A tile buffer (`r ≤ 8` rows of `nr` floats) to (`to_c`) or from a
    /// transposed `C`: `buf[i·nr + j] ↔ c[j·c_cs + i]` for `j < cols`, in
    /// groups of 8 columns, each one 8 × 8 transpose and a masked store (or
    /// load) of `r` floats per column.
    ///
    /// # Safety
    /// `c[j·c_cs + i]` must be valid for `i < r`, `j < cols`; `buf` must
    /// hold `r·nr` floats with `cols ≤ nr`, `nr` a multiple of 8; AVX2.
    #[target_feature(enable = "avx2")]
    pub(super) unsafe fn transposed(
        to_c: bool,
        buf: *mut f32,
        nr: usize,
        r: usize,
        cols: usize,
        c: *mut f32,
        c_cs: usize,
    ) {
        // SAFETY (all below): within the caller's bounds; masked lanes are
        // neither read nor written.
        unsafe {
            let lanes = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
            let mask = _mm256_cmpgt_epi32(_mm256_set1_epi32(r as i32), lanes);
            for g in (0..cols).step_by(8) {
                let q_end = 8.min(cols - g);
                if to_c {
                    let rows: [__m256; 8] = std::array::from_fn(|i| {
                        if i < r {
                            _mm256_loadu_ps(buf.add(i * nr + g))
                        } else {
                            _mm256_setzero_ps()
                        }
                    });
                    let t = transpose8(rows);
                    for (q, v) in t.iter().enumerate().take(q_end) {
                        let at = c.add((g + q) * c_cs);
                        if r == 6 {
                            // Full tiles: a 4- and a 2-float store (AMD's
                            // masked stores cost ~12 cycles each).
                            _mm_storeu_ps(at, _mm256_castps256_ps128(*v));
                            _mm_storel_epi64(at.add(4).cast(), _mm_castps_si128(_mm256_extractf128_ps::<1>(*v)));
                        } else {
                            _mm256_maskstore_ps(at, mask, *v);
                        }
                    }
                } else {
                    let t: [__m256; 8] = std::array::from_fn(|q| {
                        if q >= q_end {
                            _mm256_setzero_ps()
                        } else if r == 6 {
                            let at = c.add((g + q) * c_cs);
                            let hi = _mm_castsi128_ps(_mm_loadl_epi64(at.add(4).cast()));
                            _mm256_insertf128_ps::<1>(_mm256_castps128_ps256(_mm_loadu_ps(at)), hi)
                        } else {
                            _mm256_maskload_ps(c.add((g + q) * c_cs), mask)
                        }
                    });
                    let rows = transpose8(t);
                    for (i, v) in rows.iter().enumerate().take(r) {
                        _mm256_storeu_ps(buf.add(i * nr + g), *v);
                    }
                }
            }
        }
    }

    /// AVX2: 8 lanes.
    #[derive(Clone, Copy)]
    pub(super) struct V8(__m256);

    // Each method is inlined into a kernel compiled with AVX2 and FMA
    // enabled (`run`'s `v3`), where the intrinsics are available.
    impl Vector for V8 {
        const LANES: usize = 8;
        #[inline(always)]
        unsafe fn zero() -> Self {
            // SAFETY: AVX (the caller runs with AVX2 enabled).
            unsafe { V8(_mm256_setzero_ps()) }
        }
        #[inline(always)]
        unsafe fn splat(p: *const f32) -> Self {
            // SAFETY: the caller passes a readable pointer.
            unsafe { V8(_mm256_broadcast_ss(&*p)) }
        }
        #[inline(always)]
        unsafe fn set1(x: f32) -> Self {
            // SAFETY: AVX.
            unsafe { V8(_mm256_set1_ps(x)) }
        }
        #[inline(always)]
        unsafe fn load(p: *const f32) -> Self {
            // SAFETY: the caller passes 8 readable floats.
            unsafe { V8(_mm256_loadu_ps(p)) }
        }
        #[inline(always)]
        unsafe fn store(self, p: *mut f32) {
            // SAFETY: the caller passes 8 writable floats.
            unsafe { _mm256_storeu_ps(p, self.0) }
        }
        #[inline(always)]
        unsafe fn fma(a: Self, b: Self, c: Self) -> Self {
            // SAFETY: FMA.
            unsafe { V8(_mm256_fmadd_ps(a.0, b.0, c.0)) }
        }
        #[inline(always)]
        unsafe fn add(self, o: Self) -> Self {
            // SAFETY: AVX.
            unsafe { V8(_mm256_add_ps(self.0, o.0)) }
        }
        #[inline(always)]
        unsafe fn relu(self) -> Self {
            // `max_ps(x, 0)` returns its second operand for NaN and for ±0.
            // SAFETY: AVX.
            unsafe { V8(_mm256_max_ps(self.0, _mm256_setzero_ps())) }
        }
        #[inline(always)]
        unsafe fn sub(self, o: Self) -> Self {
            // SAFETY: AVX.
            unsafe { V8(_mm256_sub_ps(self.0, o.0)) }
        }
        #[inline(always)]
        unsafe fn mul(self, o: Self) -> Self {
            // SAFETY: AVX.
            unsafe { V8(_mm256_mul_ps(self.0, o.0)) }
        }
        #[inline(always)]
        unsafe fn div(self, o: Self) -> Self {
            // SAFETY: AVX.
            unsafe { V8(_mm256_div_ps(self.0, o.0)) }
        }
        #[inline(always)]
        unsafe fn neg(self) -> Self {
            // SAFETY: AVX.
            unsafe { V8(_mm256_xor_ps(self.0, _mm256_set1_ps(-0.0))) }
        }
        #[inline(always)]
        unsafe fn clamp(self, lo: f32, hi: f32) -> Self {
            // `max_ps`/`min_ps` return the second operand when one is NaN.
            // SAFETY: AVX.
            unsafe {
                V8(_mm256_min_ps(
                    _mm256_set1_ps(hi),
                    _mm256_max_ps(_mm256_set1_ps(lo), self.0),
                ))
            }
        }
        #[inline(always)]
        unsafe fn pow2_of_rounded(self, round_bits: u32) -> Self {
            // SAFETY: AVX2.
            unsafe {
                let bits = _mm256_sub_epi32(_mm256_castps_si256(self.0), _mm256_set1_epi32(round_bits as i32));
                let bits = _mm256_add_epi32(bits, _mm256_set1_epi32(127));
                V8(_mm256_castsi256_ps(_mm256_slli_epi32::<23>(bits)))
            }
        }
    }

    /// AVX-512: 16 lanes.
    #[derive(Clone, Copy)]
    pub(super) struct V16(__m512);

    // Inlined into `run`'s `v4`, compiled with AVX-512F enabled.
    impl Vector for V16 {
        const LANES: usize = 16;
        #[inline(always)]
        unsafe fn zero() -> Self {
            // SAFETY: AVX-512F.
            unsafe { V16(_mm512_setzero_ps()) }
        }
        #[inline(always)]
        unsafe fn splat(p: *const f32) -> Self {
            // SAFETY: the caller passes a readable pointer.
            unsafe { V16(_mm512_set1_ps(*p)) }
        }
        #[inline(always)]
        unsafe fn set1(x: f32) -> Self {
            // SAFETY: AVX-512F.
            unsafe { V16(_mm512_set1_ps(x)) }
        }
        #[inline(always)]
        unsafe fn load(p: *const f32) -> Self {
            // SAFETY: the caller passes 16 readable floats.
            unsafe { V16(_mm512_loadu_ps(p)) }
        }
        #[inline(always)]
        unsafe fn store(self, p: *mut f32) {
            // SAFETY: the caller passes 16 writable floats.
            unsafe { _mm512_storeu_ps(p, self.0) }
        }
        #[inline(always)]
        unsafe fn fma(a: Self, b: Self, c: Self) -> Self {
            // SAFETY: AVX-512F.
            unsafe { V16(_mm512_fmadd_ps(a.0, b.0, c.0)) }
        }
        #[inline(always)]
        unsafe fn add(self, o: Self) -> Self {
            // SAFETY: AVX-512F.
            unsafe { V16(_mm512_add_ps(self.0, o.0)) }
        }
        #[inline(always)]
        unsafe fn relu(self) -> Self {
            // As V8: the second operand for NaN and for ±0.
            // SAFETY: AVX-512F.
            unsafe { V16(_mm512_max_ps(self.0, _mm512_setzero_ps())) }
        }
        #[inline(always)]
        unsafe fn sub(self, o: Self) -> Self {
            // SAFETY: AVX-512F.
            unsafe { V16(_mm512_sub_ps(self.0, o.0)) }
        }
        #[inline(always)]
        unsafe fn mul(self, o: Self) -> Self {
            // SAFETY: AVX-512F.
            unsafe { V16(_mm512_mul_ps(self.0, o.0)) }
        }
        #[inline(always)]
        unsafe fn div(self, o: Self) -> Self {
            // SAFETY: AVX-512F.
            unsafe { V16(_mm512_div_ps(self.0, o.0)) }
        }
        #[inline(always)]
        unsafe fn neg(self) -> Self {
            // SAFETY: AVX-512F.
            unsafe {
                V16(_mm512_castsi512_ps(_mm512_xor_si512(
                    _mm512_castps_si512(self.0),
                    _mm512_set1_epi32(i32::MIN),
                )))
            }
        }
        #[inline(always)]
        unsafe fn clamp(self, lo: f32, hi: f32) -> Self {
            // As V8: the second operand when one is NaN.
            // SAFETY: AVX-512F.
            unsafe {
                V16(_mm512_min_ps(
                    _mm512_set1_ps(hi),
                    _mm512_max_ps(_mm512_set1_ps(lo), self.0),
                ))
            }
        }
        #[inline(always)]
        unsafe fn pow2_of_rounded(self, round_bits: u32) -> Self {
            // SAFETY: AVX-512F.
            unsafe {
                let bits = _mm512_sub_epi32(_mm512_castps_si512(self.0), _mm512_set1_epi32(round_bits as i32));
                let bits = _mm512_add_epi32(bits, _mm512_set1_epi32(127));
                V16(_mm512_castsi512_ps(_mm512_slli_epi32::<23>(bits)))
            }
        }
    }
}
