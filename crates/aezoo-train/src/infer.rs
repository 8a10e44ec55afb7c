//! Inference helpers shared by the CLI: latent interpolation, images at
//! their own size through fully convolutional models (padded, tiled past
//! the model's tile), and tensors with metadata in safetensors files
//! (latents, node embeddings).

use std::collections::{BTreeMap, HashMap};
use std::path::Path;

use aezoo_nn::model::Spatial;
use aezoo_nn::params::write_atomic;
use aezoo_nn::{tiling, Autoencoder};
use candle_core::{DType, Device, Tensor};
use safetensors::tensor::TensorView;
use safetensors::{Dtype, SafeTensors};

use crate::error::{io_err, Result, TrainError};

/// Decodes `steps` evenly spaced points on the straight line between the
/// codes of `a` and `b` (`(1, c, h, w)` each), both ends included: for a VAE
/// the posterior means, for a deterministic autoencoder its codes.
pub fn interpolate(model: &dyn Autoencoder, a: &Tensor, b: &Tensor, steps: usize) -> Result<Tensor> {
    let (za, zb) = (model.encode(a)?, model.encode(b)?);
    let codes: Vec<Tensor> = (0..steps)
        .map(|i| {
            let t = i as f64 / (steps - 1).max(1) as f64;
            (za.affine(1.0 - t, 0.0)? + zb.affine(t, 0.0)?).map_err(Into::into)
        })
        .collect::<Result<_>>()?;
    Ok(model.decode(&Tensor::cat(&codes, 0)?)?)
}

/// Writes one f32 tensor `name` with string metadata to a safetensors file
/// (atomically): the latents of `aezoo encode`, the node embeddings of
/// `aezoo encode-graph`.
pub fn save_tensor(name: &str, t: &Tensor, meta: &[(&str, String)], path: &Path) -> Result<()> {
    save_tensors(&[(name.to_string(), t.clone())], meta, path)
}

/// Writes f32 tensors with string metadata to a safetensors file (atomically).
pub fn save_tensors(tensors: &[(String, Tensor)], meta: &[(&str, String)], path: &Path) -> Result<()> {
    let other = |e: safetensors::SafeTensorError| TrainError::Other(format!("{}: {e}", path.display()));
    let mut data = Vec::with_capacity(tensors.len());
    for (name, t) in tensors {
        let t = t.to_dtype(DType::F32)?.to_device(&Device::Cpu)?;
        let bytes: Vec<u8> = t
            .flatten_all()?
            .to_vec1::<f32>()?
            .iter()
            .flat_map(|v| v.to_le_bytes())
            .collect();
        data.push((name.clone(), t.dims().to_vec(), bytes));
    }
    let views = data
        .iter()
        .map(|(n, dims, bytes)| {
            Ok((
                n.as_str(),
                TensorView::new(Dtype::F32, dims.clone(), bytes).map_err(other)?,
            ))
        })
        .collect::<Result<Vec<_>>>()?;
    let meta: HashMap<String, String> = meta.iter().map(|(k, v)| (k.to_string(), v.clone())).collect();
    let out = safetensors::tensor::serialize(views, Some(meta)).map_err(other)?;
    write_atomic(path, &out)?;
    Ok(())
}

/// Reads the f32 tensor `name` and the metadata of a safetensors file; a
/// missing tensor, another dtype or a corrupt file is an error naming it.
pub fn load_tensor(name: &str, path: &Path) -> Result<(Tensor, HashMap<String, String>)> {
    let (mut tensors, meta) = load_tensors(path)?;
    let t = tensors.remove(name).ok_or_else(|| TrainError::Checkpoint {
        path: path.to_path_buf(),
        msg: format!("no tensor `{name}`"),
    })?;
    Ok((t, meta))
}

/// Every tensor of a safetensors file of f32 tensors, by name, with its
/// metadata; another dtype, NaN or Inf, or a corrupt file is an error naming it.
pub fn load_tensors(path: &Path) -> Result<(BTreeMap<String, Tensor>, HashMap<String, String>)> {
    let bad = |msg: String| TrainError::Checkpoint {
        path: path.to_path_buf(),
        msg,
    };
    aezoo_nn::params::check_file_size(path)?;
    let bytes = std::fs::read(path).map_err(io_err(path))?;
    let (_, meta) = SafeTensors::read_metadata(&bytes).map_err(|e| bad(format!("not a safetensors file ({e})")))?;
    let st = SafeTensors::deserialize(&bytes).map_err(|e| bad(e.to_string()))?;
    let mut out = BTreeMap::new();
    for (name, view) in st.tensors() {
        if view.dtype() != Dtype::F32 {
            return Err(bad(format!("`{name}` is {:?}, expected F32", view.dtype())));
        }
        let vals: Vec<f32> = view
            .data()
            .chunks_exact(4)
            .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
            .collect();
        if let Some(i) = vals.iter().position(|v| !v.is_finite()) {
            return Err(bad(format!("`{name}` holds NaN or Inf (first at flat index {i})")));
        }
        out.insert(name.clone(), Tensor::from_vec(vals, view.shape(), &Device::Cpu)?);
    }
    Ok((out, meta.metadata().clone().unwrap_or_default()))
}

/// Images `(b, c, h, w)` padded on the right and bottom (edge pixels
/// repeated) to multiples of `m`.
fn pad_to_multiple(xs: &Tensor, m: usize) -> Result<Tensor> {
    let (_, _, h, w) = xs.dims4()?;
    Ok(xs
        .pad_with_same(2, 0, h.next_multiple_of(m) - h)?
        .pad_with_same(3, 0, w.next_multiple_of(m) - w)?)
}

/// The latents of images at their own size with a fully convolutional
/// model: padded to a multiple of its factor, in tiles past its tile.
pub fn encode_any_size(model: &dyn Autoencoder, sp: Spatial, xs: &Tensor) -> Result<Tensor> {
    let x = pad_to_multiple(xs, sp.factor)?;
    let (_, _, h, w) = x.dims4()?;
    Ok(if tiling::needs_tiles([h, w], sp.tile) {
        tiling::encode(&x, sp, |t| model.encode(t))?
    } else {
        model.encode(&x)?
    })
}

/// Images from latents with a fully convolutional model, in tiles past its
/// latent tile, cropped to `hw` when given (the size before padding).
pub fn decode_any_size(model: &dyn Autoencoder, sp: Spatial, z: &Tensor, hw: Option<[usize; 2]>) -> Result<Tensor> {
    let (_, _, h, w) = z.dims4()?;
    let y = if tiling::needs_tiles([h, w], sp.latent_tile()) {
        tiling::decode(z, sp, |t| model.decode(t))?
    } else {
        model.decode(z)?
    };
    Ok(match hw {
        Some([oh, ow]) if oh <= y.dim(2)? && ow <= y.dim(3)? => y.narrow(2, 0, oh)?.narrow(3, 0, ow)?,
        _ => y,
    })
}

/// An image through a fully convolutional model at its own size.
pub fn reconstruct_any_size(model: &dyn Autoencoder, sp: Spatial, xs: &Tensor) -> Result<Tensor> {
    let (_, _, h, w) = xs.dims4()?;
    let z = encode_any_size(model, sp, xs)?;
    decode_any_size(model, sp, &z, Some([h, w]))
}
