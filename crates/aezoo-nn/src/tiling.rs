//! Tiled encoding and decoding for fully convolutional models, as diffusers'
//! `AutoencoderKL.enable_tiling()` does it: the input is cut into tiles of
//! the model's tile size at a stride of `(1 − overlap)` tiles, each tile goes
//! through the model alone, and each output tile is blended linearly into
//! the one above and the one to its left over `overlap` of a tile, then
//! cropped to the stride. Memory is that of one tile's activations plus
//! the output. The same algorithm and the same numbers as diffusers'
//! (pinned in aezoo-diffusers' tests); a seam still costs a little against
//! an untiled pass (README: the measured PSNR).

use candle_core::{Result, Tensor};

use crate::model::Spatial;

/// Whether an input of `[h, w]` (in the input's units) is larger than `tile`.
pub fn needs_tiles([h, w]: [usize; 2], tile: [usize; 2]) -> bool {
    h > tile[0] || w > tile[1]
}

/// `encode` applied tile by tile to images `(b, c, h, w)`; `sp` says the
/// tile and the downsampling.
pub fn encode(xs: &Tensor, sp: Spatial, encode: impl Fn(&Tensor) -> Result<Tensor>) -> Result<Tensor> {
    tiled(xs, sp.tile, sp.latent_tile(), sp.overlap, encode)
}

/// `decode` applied tile by tile to latents `(b, c, h, w)`.
pub fn decode(zs: &Tensor, sp: Spatial, decode: impl Fn(&Tensor) -> Result<Tensor>) -> Result<Tensor> {
    tiled(zs, sp.latent_tile(), sp.tile, sp.overlap, decode)
}

fn tiled(
    xs: &Tensor,
    tile_in: [usize; 2],
    tile_out: [usize; 2],
    overlap: f64,
    f: impl Fn(&Tensor) -> Result<Tensor>,
) -> Result<Tensor> {
    let (_, _, h, w) = xs.dims4()?;
    // diffusers' integer rounding: int(size · (1 − overlap)), int(size · overlap).
    let stride = |t: usize| ((t as f64 * (1.0 - overlap)) as usize).max(1);
    let (sy, sx) = (stride(tile_in[0]), stride(tile_in[1]));
    let (by, bx) = (
        (tile_out[0] as f64 * overlap) as usize,
        (tile_out[1] as f64 * overlap) as usize,
    );
    let (ly, lx) = (tile_out[0] - by, tile_out[1] - bx);
    let mut above: Vec<Tensor> = Vec::new();
    let mut rows = Vec::new();
    for i in (0..h).step_by(sy) {
        let mut row: Vec<Tensor> = Vec::new();
        let mut cropped = Vec::new();
        for (j, x0) in (0..w).step_by(sx).enumerate() {
            let tile = xs
                .narrow(2, i, tile_in[0].min(h - i))?
                .narrow(3, x0, tile_in[1].min(w - x0))?
                .contiguous()?;
            let mut t = f(&tile)?;
            if let Some(a) = above.get(j) {
                t = blend(a, &t, by, 2)?;
            }
            if let Some(left) = row.last() {
                t = blend(left, &t, bx, 3)?;
            }
            let (th, tw) = (t.dim(2)?, t.dim(3)?);
            cropped.push(t.narrow(2, 0, ly.min(th))?.narrow(3, 0, lx.min(tw))?);
            row.push(t);
        }
        rows.push(Tensor::cat(&cropped, 3)?);
        above = row;
    }
    Tensor::cat(&rows, 2)
}

/// `b` with its first `extent` rows (`dim` 2) or columns (`dim` 3) blended
/// from the last ones of `a`: weight `k / extent` on `b`'s `k`-th.
fn blend(a: &Tensor, b: &Tensor, extent: usize, dim: usize) -> Result<Tensor> {
    let (na, nb) = (a.dim(dim)?, b.dim(dim)?);
    let e = extent.min(na).min(nb);
    if e == 0 {
        return Ok(b.clone());
    }
    let ramp: Vec<f32> = (0..e).map(|k| k as f32 / e as f32).collect();
    let mut shape = vec![1usize; 4];
    shape[dim] = e;
    let wb = Tensor::from_vec(ramp, shape, b.device())?.to_dtype(b.dtype())?;
    let wa = wb.affine(-1.0, 1.0)?;
    let head = (a.narrow(dim, na - e, e)?.broadcast_mul(&wa)? + b.narrow(dim, 0, e)?.broadcast_mul(&wb)?)?;
    Tensor::cat(&[&head, &b.narrow(dim, e, nb - e)?], dim)
}
