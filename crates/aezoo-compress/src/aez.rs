//! The `.aez` file: an image coded by a learned codec into a real bitstream.
//!
//! The image is cut into tiles of the codec's tile size (`model.tile`, by
//! default the training size; a fully convolutional codec codes an image
//! within that size as one tile padded to its stride; edge-replicated padding
//! on the right and bottom, removed after decoding); every tile's integer
//! latent is range-coded (constriction's `DefaultRangeEncoder`, 24-bit
//! fixed-point probabilities) under the learned per-channel Laplace of the
//! entropy model, quantised to the integers by `DefaultLeakyQuantizer` so
//! every symbol of the support keeps a non-zero probability.
//!
//! ```text
//! offset  size  field
//! 0       4     magic "AEZ\x1a"
//! 4       1     format version (1)
//! 5       1     n = length of the model id
//! 6       n     model id (UTF-8: the entry name)
//! 6+n     8     model fingerprint (FNV-1a 64 of the decoder and entropy tensors), LE
//! 14+n    1     image channels
//! 15+n    4     image height, LE
//! 19+n    4     image width, LE
//! 23+n    2+2   tile height, tile width, LE
//! 27+n    4     m = number of 32-bit code words, LE
//! 31+n    4m    the range coder's words, LE
//! end−4   4     CRC-32 (IEEE) of every byte before it, LE
//! ```
//! Decoding checks, in order: length, magic, version, checksum, model id and
//! fingerprint, sizes (against the model and a pixel budget), the word count;
//! every failure is an [`AezError`] naming what is wrong — never a panic, and
//! never an allocation larger than the image the header announces, itself
//! capped at [`MAX_PIXELS`].

use candle_core::{DType, Device, Tensor};
use constriction::stream::model::DefaultLeakyQuantizer;
use constriction::stream::queue::{DefaultRangeDecoder, DefaultRangeEncoder};
use constriction::stream::{Decode, Encode};

use crate::{Codec, Synthesis};
use aezoo_nn::spec::FeatShape;

/// The first four bytes of every `.aez` file.
pub const MAGIC: [u8; 4] = *b"AEZ\x1a";
/// The format version this code writes and reads.
pub const VERSION: u8 = 1;
/// Latent values are clamped to `±SUPPORT` before coding.
pub const SUPPORT: i32 = 1 << 12;
/// The largest image a file may announce (pixels per channel, 32 MP): the
/// workspace's image budget, [`aezoo_nn::limits::MAX_IMAGE_PIXELS`].
pub const MAX_PIXELS: u64 = aezoo_nn::limits::MAX_IMAGE_PIXELS as u64;
/// Tiles go through the encoder and decoder this many at a time, so memory
/// stays that of the image, whatever its size.
const TILE_CHUNK: usize = 64;
/// …and at most this many pixels (one 1024 × 1024 tile): the activations of
/// a chunk, not of the image, bound a photograph's memory.
const CHUNK_PIXELS: usize = 1 << 20;

/// Tiles coded together: [`TILE_CHUNK`] small tiles, or as many large ones
/// as fit [`CHUNK_PIXELS`] (at least one).
fn tiles_per_chunk(th: usize, tw: usize) -> usize {
    (CHUNK_PIXELS / (th * tw).max(1)).clamp(1, TILE_CHUNK)
}

/// Why a `.aez` file cannot be written or read.
#[derive(Debug, thiserror::Error)]
pub enum AezError {
    #[error("not an .aez file (bad magic number)")]
    Magic,
    #[error("format version {0}, this aezoo reads version {VERSION}")]
    Version(u8),
    #[error("truncated: {0}")]
    Truncated(String),
    #[error("corrupted: checksum {stored:08x} stored, {computed:08x} computed")]
    Checksum { stored: u32, computed: u32 },
    #[error("made by model `{file_model}` (fingerprint {file_fp:016x}), not by `{model}` ({fp:016x}): decode it with the weights that wrote it")]
    Model {
        file_model: String,
        file_fp: u64,
        model: String,
        fp: u64,
    },
    #[error("{0}")]
    Invalid(String),
    #[error("entropy decoding failed: {0}")]
    Coder(String),
    #[error(transparent)]
    Candle(#[from] candle_core::Error),
}

pub type Result<T> = std::result::Result<T, AezError>;

/// What the header says.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Header {
    pub model: String,
    pub fingerprint: u64,
    pub channels: u8,
    pub height: u32,
    pub width: u32,
    pub tile: [u16; 2],
}

/// FNV-1a 64 over the names and f32 little-endian values of `tensors`
/// (sorted by name): the identity of a decoder.
pub fn fingerprint(tensors: &[(String, Tensor)]) -> Result<u64> {
    let mut sorted: Vec<&(String, Tensor)> = tensors.iter().collect();
    sorted.sort_by(|a, b| a.0.cmp(&b.0));
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    let mut eat = |bytes: &[u8]| {
        for &b in bytes {
            h ^= b as u64;
            h = h.wrapping_mul(0x0000_0100_0000_01b3);
        }
    };
    for (name, t) in sorted {
        eat(name.as_bytes());
        for v in t.to_dtype(DType::F32)?.flatten_all()?.to_vec1::<f32>()? {
            eat(&v.to_le_bytes());
        }
    }
    Ok(h)
}

/// Channel of each latent value of one tile, in row-major order.
fn channel_of(latent: FeatShape) -> Vec<usize> {
    match latent {
        FeatShape::Map { c, h, w } => (0..c * h * w).map(|i| i / (h * w)).collect(),
        FeatShape::Flat { d } => (0..d).collect(),
    }
}

fn latent_len(latent: FeatShape) -> usize {
    match latent {
        FeatShape::Map { c, h, w } => c * h * w,
        FeatShape::Flat { d } => d,
    }
}

/// Tiles `start..start + n` (row-major over a grid of `nx` columns) of the
/// image `(1, c, H, W)`, `(n, c, th, tw)`: a tile past the image's edge is
/// padded by edge replication (the image itself is never copied whole).
fn tiles_of(img: &Tensor, nx: usize, [th, tw]: [usize; 2], start: usize, n: usize) -> Result<Tensor> {
    let (_, _, h, w) = img.dims4()?;
    let tiles = (start..start + n)
        .map(|k| {
            let (y0, x0) = ((k / nx) * th, (k % nx) * tw);
            let (hh, ww) = (th.min(h - y0), tw.min(w - x0));
            img.narrow(2, y0, hh)?
                .narrow(3, x0, ww)?
                .pad_with_same(2, 0, th - hh)?
                .pad_with_same(3, 0, tw - ww)
        })
        .collect::<candle_core::Result<Vec<_>>>()?;
    Ok(Tensor::cat(&tiles, 0)?)
}

fn laplaces(s: &Synthesis) -> Result<Vec<probability::distribution::Laplace>> {
    let (loc, scale) = s.entropy().params()?;
    Ok(loc
        .iter()
        .zip(&scale)
        .map(|(&m, &b)| probability::distribution::Laplace::new(m, b.max(1e-6)))
        .collect())
}

/// Decodes `symbols` (tiles × latent values) into the image they code.
fn synthesize(
    s: &Synthesis,
    latent: FeatShape,
    symbols: &[i32],
    [th, tw]: [usize; 2],
    [h, w]: [usize; 2],
) -> Result<Tensor> {
    let (ny, nx) = (h.div_ceil(th), w.div_ceil(tw));
    let per_tile = latent_len(latent);
    let (dtype, dev) = s.entropy().dtype_device();
    let chunk = tiles_per_chunk(th, tw);
    // The output is written tile by tile (cropped at the image's edge):
    // memory holds the image once and one chunk's activations.
    let mut out: Option<(usize, Vec<f32>)> = None;
    for (ci, part) in symbols.chunks(chunk * per_tile).enumerate() {
        let n = part.len() / per_tile;
        let mut dims = vec![n];
        match latent {
            FeatShape::Map { c, h, w } => dims.extend([c, h, w]),
            FeatShape::Flat { d } => dims.push(d),
        }
        let y = Tensor::from_vec(part.iter().map(|&v| v as f32).collect::<Vec<_>>(), dims, &Device::Cpu)?
            .to_dtype(dtype)?
            .to_device(&dev)?;
        let tiles = s.decode(&y)?.to_dtype(DType::F32)?.to_device(&Device::Cpu)?;
        let (_, c, dh, dw) = tiles.dims4()?;
        if (dh, dw) != (th, tw) {
            return Err(AezError::Invalid(format!(
                "the decoder gives {dh}x{dw} tiles, the file's tile is {th}x{tw}"
            )));
        }
        let (c, buf) = out.get_or_insert_with(|| (c, vec![0f32; c * h * w]));
        let values = tiles.flatten_all()?.to_vec1::<f32>()?;
        for t in 0..n {
            let k = ci * chunk + t;
            let (y0, x0) = ((k / nx) * th, (k % nx) * tw);
            let (hh, ww) = (th.min(h - y0), tw.min(w - x0));
            for ch in 0..*c {
                for row in 0..hh {
                    let src = ((t * *c + ch) * th + row) * tw;
                    let dst = (ch * h + y0 + row) * w + x0;
                    buf[dst..dst + ww].copy_from_slice(&values[src..src + ww]);
                }
            }
        }
    }
    let Some((c, buf)) = out else {
        return Err(AezError::Invalid(format!(
            "no tiles for a {h}x{w} image ({ny}x{nx} tiles)"
        )));
    };
    Ok(Tensor::from_vec(buf, (1, c, h, w), &Device::Cpu)?.to_dtype(dtype)?)
}

/// Codes `img` (`(1, c, H, W)` in [0, 1], any size) into `.aez` bytes.
pub fn compress(codec: &Codec, model: &str, fingerprint: u64, img: &Tensor) -> Result<Vec<u8>> {
    let (_, c, h, w) = img.dims4()?;
    let [mc, _, _] = codec.synthesis().image();
    let [th, tw] = codec.synthesis().tile_for(h, w);
    let latent = codec.synthesis().latent_for([th, tw])?;
    if c != mc {
        return Err(AezError::Invalid(format!(
            "the image has {c} channels, the codec takes {mc}"
        )));
    }
    if h == 0 || w == 0 || (h as u64) * (w as u64) > MAX_PIXELS || h > u32::MAX as usize || w > u32::MAX as usize {
        return Err(AezError::Invalid(format!(
            "image {h}x{w}: sizes from 1 to {MAX_PIXELS} pixels"
        )));
    }
    if model.len() > 255 {
        return Err(AezError::Invalid("model id longer than 255 bytes".into()));
    }
    let (ny, nx) = (h.div_ceil(th), w.div_ceil(tw));
    let mut symbols: Vec<i32> = Vec::new();
    let chunk = tiles_per_chunk(th, tw);
    for start in (0..ny * nx).step_by(chunk) {
        let n = chunk.min(ny * nx - start);
        let tiles = tiles_of(img, nx, [th, tw], start, n)?;
        let y_hat = crate::Autoencoder::encode(codec, &tiles)?.clamp(-(SUPPORT as f64), SUPPORT as f64)?;
        symbols.extend(
            y_hat
                .to_dtype(DType::F32)?
                .flatten_all()?
                .to_vec1::<f32>()?
                .into_iter()
                .map(|v| v as i32),
        );
    }
    let channels = channel_of(latent);
    let dists = laplaces(codec.synthesis())?;
    let quantizer = DefaultLeakyQuantizer::new(-SUPPORT..=SUPPORT);
    let mut enc = DefaultRangeEncoder::new();
    for (i, &s) in symbols.iter().enumerate() {
        let d = dists[channels[i % channels.len()]];
        enc.encode_symbol(s, quantizer.quantize(d))
            .map_err(|e| AezError::Coder(format!("{e:?}")))?;
    }
    let words = enc.into_compressed().map_err(|e| AezError::Coder(format!("{e:?}")))?;
    let mut out = Vec::with_capacity(35 + model.len() + 4 * words.len());
    out.extend(MAGIC);
    out.push(VERSION);
    out.push(model.len() as u8);
    out.extend(model.as_bytes());
    out.extend(fingerprint.to_le_bytes());
    out.push(c as u8);
    out.extend((h as u32).to_le_bytes());
    out.extend((w as u32).to_le_bytes());
    out.extend((th as u16).to_le_bytes());
    out.extend((tw as u16).to_le_bytes());
    out.extend((words.len() as u32).to_le_bytes());
    for wd in &words {
        out.extend(wd.to_le_bytes());
    }
    let crc = crc32fast::hash(&out);
    out.extend(crc.to_le_bytes());
    Ok(out)
}

/// A little-endian reader over the header that reports truncation.
struct Reader<'a> {
    bytes: &'a [u8],
    at: usize,
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize, what: &str) -> Result<&'a [u8]> {
        let end = self.at.checked_add(n).filter(|&e| e <= self.bytes.len());
        let Some(end) = end else {
            return Err(AezError::Truncated(format!("the file ends inside the {what}")));
        };
        let s = &self.bytes[self.at..end];
        self.at = end;
        Ok(s)
    }
    fn u8(&mut self, what: &str) -> Result<u8> {
        Ok(self.take(1, what)?[0])
    }
    fn u16(&mut self, what: &str) -> Result<u16> {
        Ok(u16::from_le_bytes(self.take(2, what)?.try_into().expect("2 bytes")))
    }
    fn u32(&mut self, what: &str) -> Result<u32> {
        Ok(u32::from_le_bytes(self.take(4, what)?.try_into().expect("4 bytes")))
    }
    fn u64(&mut self, what: &str) -> Result<u64> {
        Ok(u64::from_le_bytes(self.take(8, what)?.try_into().expect("8 bytes")))
    }
}

/// Reads and checks the header (magic, version, checksum), returning it
/// with the code words.
pub fn read(bytes: &[u8]) -> Result<(Header, Vec<u32>)> {
    if bytes.len() < 4 {
        return Err(AezError::Truncated(format!(
            "{} bytes, shorter than the magic number",
            bytes.len()
        )));
    }
    if bytes[..4] != MAGIC {
        return Err(AezError::Magic);
    }
    if bytes.len() < 9 {
        return Err(AezError::Truncated(format!(
            "{} bytes, shorter than the smallest header",
            bytes.len()
        )));
    }
    if bytes[4] != VERSION {
        return Err(AezError::Version(bytes[4]));
    }
    let (body, tail) = bytes.split_at(bytes.len() - 4);
    let stored = u32::from_le_bytes(tail.try_into().expect("4 bytes"));
    let computed = crc32fast::hash(body);
    if stored != computed {
        return Err(AezError::Checksum { stored, computed });
    }
    let mut r = Reader { bytes: body, at: 5 };
    let n = r.u8("model id length")? as usize;
    let model = String::from_utf8(r.take(n, "model id")?.to_vec())
        .map_err(|_| AezError::Invalid("the model id is not UTF-8".into()))?;
    // An entry name: it names the weights folder `decompress` looks in
    // (`weights/<id>`), so no separators, no `..`, no control characters.
    if model.is_empty()
        || model == "."
        || model == ".."
        || model.chars().any(|c| c.is_control() || c == '/' || c == '\\')
    {
        return Err(AezError::Invalid(format!(
            "the model id {model:?} is not an entry name"
        )));
    }
    let fingerprint = r.u64("model fingerprint")?;
    let channels = r.u8("channel count")?;
    let height = r.u32("image height")?;
    let width = r.u32("image width")?;
    let tile = [r.u16("tile height")?, r.u16("tile width")?];
    let m = r.u32("word count")? as usize;
    let rest = body.len() - r.at;
    if rest != 4 * m {
        return Err(AezError::Truncated(format!(
            "{m} code words announced, {rest} bytes of them present"
        )));
    }
    let words = r
        .take(4 * m, "code words")?
        .chunks_exact(4)
        .map(|c| u32::from_le_bytes(c.try_into().expect("4 bytes")))
        .collect();
    Ok((
        Header {
            model,
            fingerprint,
            channels,
            height,
            width,
            tile,
        },
        words,
    ))
}

/// Decodes `.aez` bytes with the decoding half of the codec that wrote them
/// (`model` and `fingerprint` must match the file's) into `(1, c, H, W)`.
pub fn decompress(s: &Synthesis, model: &str, fingerprint: u64, bytes: &[u8]) -> Result<Tensor> {
    let (hd, words) = read(bytes)?;
    if hd.model != model || hd.fingerprint != fingerprint {
        return Err(AezError::Model {
            file_model: hd.model,
            file_fp: hd.fingerprint,
            model: model.to_string(),
            fp: fingerprint,
        });
    }
    let [c, _, _] = s.image();
    if hd.channels as usize != c {
        return Err(AezError::Invalid(format!(
            "the header says {} channels, the model codes {c}",
            hd.channels
        )));
    }
    let [th, tw] = [hd.tile[0] as usize, hd.tile[1] as usize];
    let latent = s
        .latent_for([th, tw])
        .map_err(|e| AezError::Invalid(format!("the header's tile does not fit this codec: {e}")))?;
    let (h, w) = (hd.height as usize, hd.width as usize);
    if h == 0 || w == 0 || (h as u64) * (w as u64) > MAX_PIXELS {
        return Err(AezError::Invalid(format!(
            "image size {h}x{w} out of range (1 to {MAX_PIXELS} pixels)"
        )));
    }
    let (ny, nx) = (h.div_ceil(th), w.div_ceil(tw));
    let count = ny * nx * latent_len(latent);
    let channels = channel_of(latent);
    let dists = laplaces(s)?;
    let quantizer = DefaultLeakyQuantizer::new(-SUPPORT..=SUPPORT);
    let mut dec = DefaultRangeDecoder::from_compressed(words).map_err(|e| AezError::Coder(format!("{e:?}")))?;
    let mut symbols = Vec::with_capacity(count);
    for i in 0..count {
        let d = dists[channels[i % channels.len()]];
        let v = dec
            .decode_symbol(quantizer.quantize(d))
            .map_err(|e| AezError::Coder(format!("{e:?}")))?;
        symbols.push(v);
    }
    synthesize(s, latent, &symbols, [th, tw], [h, w])
}
