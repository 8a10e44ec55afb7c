//! The parameter store behind every aezoo model: seeded, PyTorch-faithful
//! initialisation for training, strict loading for checkpoints and pretrained
//! weights.
//!
//! A model is built once through a [`candle_nn::VarBuilder`] whose backend is a
//! [`ParamStore`]. In *init* mode each requested tensor is drawn from the
//! store's own [`Rng`] (candle's CPU generator cannot be seeded) following the
//! [`candle_nn::Init`] hint the layer gave; in *load* mode it is taken from a
//! safetensors file, and the store remembers which file tensors were used so
//! that [`ParamStore::finish`] can refuse a file made for another model.
//! Names are the `vb.pp(..)` paths, which are also the safetensors keys.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use candle_core::{DType, Device, Result, Shape, Tensor, Var};
use candle_nn::var_builder::SimpleBackend;
use candle_nn::{Init, VarBuilder};

use crate::limits;
use crate::rng::Rng;

#[derive(Debug)]
enum Source {
    Init(Rng),
    File {
        path: PathBuf,
        tensors: BTreeMap<String, Tensor>,
    },
}

#[derive(Debug)]
struct Inner {
    source: Source,
    trainable: bool,
    /// Parameters made so far, against `budget`.
    made: usize,
    /// The most parameters the model may have ([`limits::MAX_MODEL_PARAMS`]).
    budget: usize,
    vars: BTreeMap<String, Var>,
    frozen: BTreeMap<String, Tensor>,
    used: BTreeSet<String>,
}

/// Owns a model's parameters; cheap to clone (shared state).
#[derive(Clone, Debug)]
pub struct ParamStore {
    inner: Arc<Mutex<Inner>>,
}

fn err(msg: String) -> candle_core::Error {
    candle_core::Error::Msg(msg)
}

impl ParamStore {
    /// Fresh, trainable parameters drawn from a generator seeded with `seed`.
    pub fn init(seed: u64) -> Self {
        Self::with_source(Source::Init(Rng::new(seed)), true)
    }

    /// Fresh parameters as [`ParamStore::init`] draws them, as plain
    /// tensors (no gradient tracking: inference, timing).
    pub fn init_frozen(seed: u64) -> Self {
        Self::with_source(Source::Init(Rng::new(seed)), false)
    }

    /// Parameters read from a safetensors file. With `trainable` they become
    /// [`Var`]s (to resume training); otherwise plain tensors (inference).
    pub fn load(path: &Path, trainable: bool) -> Result<Self> {
        check_file_size(path)?;
        let bytes = std::fs::read(path).map_err(|e| err(format!("{}: cannot read weights: {e}", path.display())))?;
        Self::from_bytes(&bytes, path, trainable)
    }

    /// Like [`ParamStore::load`] from bytes already in memory; `path` only
    /// names the source in errors.
    pub fn from_bytes(bytes: &[u8], path: &Path, trainable: bool) -> Result<Self> {
        let st = safetensors::SafeTensors::deserialize(bytes).map_err(|e| {
            err(format!(
                "{}: not a valid safetensors file ({e}); was it truncated or corrupted?",
                path.display()
            ))
        })?;
        let mut tensors = BTreeMap::new();
        for (name, view) in st.tensors() {
            let t = checked_load(&view, &name, path)?;
            tensors.insert(name, t);
        }
        Ok(Self::with_source(
            Source::File {
                path: path.to_path_buf(),
                tensors,
            },
            trainable,
        ))
    }

    /// A store of a file's tensors under other names: `f` maps each name
    /// and tensor to the name (and tensor) the model asks for, or `None` to
    /// drop it (an imported layout's keys; what does not belong to the
    /// model). Two tensors given one name are an error naming the file.
    pub fn renamed(self, mut f: impl FnMut(&str, &Tensor) -> Result<Option<(String, Tensor)>>) -> Result<Self> {
        let mut inner = self.inner.lock().expect("param store poisoned");
        if let Source::File { path, tensors } = &mut inner.source {
            let mut out = BTreeMap::new();
            for (name, t) in std::mem::take(tensors) {
                if let Some((new, t)) = f(&name, &t).map_err(|e| err(format!("{}: {e}", path.display())))? {
                    if out.insert(new.clone(), t).is_some() {
                        return Err(err(format!("{}: two tensors map to `{new}`", path.display())));
                    }
                }
            }
            *tensors = out;
        }
        drop(inner);
        Ok(self)
    }

    /// The tensors of a store loaded from a file, by name (empty in init mode).
    pub fn file_tensors(&self) -> BTreeMap<String, Tensor> {
        match &self.inner.lock().expect("param store poisoned").source {
            Source::File { tensors, .. } => tensors.clone(),
            Source::Init(_) => BTreeMap::new(),
        }
    }

    fn with_source(source: Source, trainable: bool) -> Self {
        Self {
            inner: Arc::new(Mutex::new(Inner {
                source,
                trainable,
                made: 0,
                budget: limits::MAX_MODEL_PARAMS,
                vars: BTreeMap::new(),
                frozen: BTreeMap::new(),
                used: BTreeSet::new(),
            })),
        }
    }

    /// This store with a smaller parameter budget than
    /// [`limits::MAX_MODEL_PARAMS`] (a smaller machine, or a test).
    pub fn with_param_budget(self, max_params: usize) -> Self {
        self.inner.lock().expect("param store poisoned").budget = max_params.min(limits::MAX_MODEL_PARAMS);
        self
    }

    /// A `VarBuilder` that builds a model on this store.
    pub fn var_builder(&self, dtype: DType, dev: &Device) -> VarBuilder<'static> {
        VarBuilder::from_backend(Box::new(self.clone()), dtype, dev.clone())
    }

    /// After the model is built: in load mode, refuses a file with tensors the
    /// model did not ask for (a checkpoint of another entry, say).
    pub fn finish(&self) -> Result<()> {
        let inner = self.inner.lock().expect("param store poisoned");
        if let Source::File { path, tensors } = &inner.source {
            let extra: Vec<&String> = tensors.keys().filter(|k| !inner.used.contains(*k)).collect();
            if !extra.is_empty() {
                let shown: Vec<&str> = extra.iter().take(5).map(|s| s.as_str()).collect();
                return Err(err(format!(
                    "{}: {} tensor(s) that this model does not have ({}{}): the file belongs to a different model or configuration",
                    path.display(),
                    extra.len(),
                    shown.join(", "),
                    if extra.len() > 5 { ", …" } else { "" }
                )));
            }
        }
        Ok(())
    }

    /// The trainable variables, sorted by name.
    pub fn vars(&self) -> Vec<(String, Var)> {
        let inner = self.inner.lock().expect("param store poisoned");
        inner.vars.iter().map(|(k, v)| (k.clone(), v.clone())).collect()
    }

    /// Every parameter as a plain tensor, sorted by name.
    pub fn tensors(&self) -> Vec<(String, Tensor)> {
        let inner = self.inner.lock().expect("param store poisoned");
        let mut all: Vec<(String, Tensor)> = inner
            .vars
            .iter()
            .map(|(k, v)| (k.clone(), v.as_detached_tensor()))
            .collect();
        all.extend(inner.frozen.iter().map(|(k, t)| (k.clone(), t.clone())));
        all.sort_by(|a, b| a.0.cmp(&b.0));
        all
    }

    /// Total number of scalar parameters.
    pub fn num_params(&self) -> usize {
        self.tensors().iter().map(|(_, t)| t.elem_count()).sum()
    }

    /// Writes every parameter to a safetensors file, atomically (a temp file
    /// in the same folder, then a rename).
    pub fn save(&self, path: &Path) -> Result<()> {
        let tensors = self.tensors();
        save_safetensors_atomic(&tensors, path)
    }

    /// Overwrites the values of the trainable variables from `tensors`
    /// (name → value); every variable must be present with the same shape.
    pub fn set_values(&self, tensors: &BTreeMap<String, Tensor>, origin: &Path) -> Result<()> {
        let inner = self.inner.lock().expect("param store poisoned");
        for (name, var) in inner.vars.iter() {
            let t = tensors
                .get(name)
                .ok_or_else(|| err(format!("{}: missing tensor `{name}`", origin.display())))?;
            if t.dims() != var.dims() {
                return Err(err(format!(
                    "{}: tensor `{name}` has shape {:?}, the model expects {:?}",
                    origin.display(),
                    t.dims(),
                    var.dims()
                )));
            }
            var.set(&t.to_dtype(var.dtype())?.to_device(var.device())?)?;
        }
        Ok(())
    }

    fn make(&self, s: &Shape, name: &str, h: &Init, dtype: DType, dev: &Device) -> Result<Tensor> {
        let mut inner = self.inner.lock().expect("param store poisoned");
        if let Some(v) = inner.vars.get(name) {
            return check_shape(name, v.as_tensor().clone(), s, None);
        }
        if let Some(t) = inner.frozen.get(name) {
            return check_shape(name, t.clone(), s, None);
        }
        // The budget, before anything of this size is drawn or converted.
        let n =
            limits::elems_within(&format!("parameter `{name}`"), s.dims(), limits::MAX_TENSOR_ELEMS).map_err(err)?;
        let made = inner.made.saturating_add(n);
        limits::within("the model's parameter count", made as u64, inner.budget as u64)
            .map_err(|m| err(format!("parameter `{name}`: {m}")))?;
        inner.made = made;
        let value = match &mut inner.source {
            Source::Init(rng) => draw(rng, s, h, dtype, dev)?,
            Source::File { path, tensors } => {
                let t = tensors.get(name).ok_or_else(|| {
                    err(format!(
                        "{}: missing tensor `{name}` (the model expects shape {:?}); the file belongs to a different model or configuration",
                        path.display(),
                        s.dims()
                    ))
                })?;
                let t = check_shape(name, t.clone(), s, Some(path))?;
                t.to_dtype(dtype)?.to_device(dev)?
            }
        };
        inner.used.insert(name.to_string());
        if inner.trainable {
            let var = Var::from_tensor(&value)?;
            let t = var.as_tensor().clone();
            inner.vars.insert(name.to_string(), var);
            Ok(t)
        } else {
            inner.frozen.insert(name.to_string(), value.clone());
            Ok(value)
        }
    }
}

/// Refuses a weights file larger than a model within the budget can be
/// ([`limits::MAX_MODEL_PARAMS`] values of 8 bytes, and a header), before
/// reading it.
pub fn check_file_size(path: &Path) -> Result<()> {
    let len = std::fs::metadata(path)
        .map_err(|e| err(format!("{}: cannot read weights: {e}", path.display())))?
        .len();
    let limit = 8 * limits::MAX_MODEL_PARAMS as u64 + (100 << 20);
    limits::within("a weights file of bytes", len, limit).map_err(|m| err(format!("{}: {m}", path.display())))
}

/// One tensor of a weights file, refused unless it is a float type holding
/// only finite values: an integer tensor would be converted into nonsense
/// weights, a NaN or Inf would spread through every output.
pub fn checked_load(view: &safetensors::tensor::TensorView<'_>, name: &str, path: &Path) -> Result<Tensor> {
    use safetensors::Dtype;
    let what = |m: String| err(format!("{}: tensor `{name}`: {m}", path.display()));
    if !matches!(view.dtype(), Dtype::F32 | Dtype::F64 | Dtype::F16 | Dtype::BF16) {
        return Err(what(format!(
            "dtype {:?}, expected a float type (F32, F64, F16, BF16)",
            view.dtype()
        )));
    }
    let t =
        candle_core::safetensors::Load::load(view, &Device::Cpu).map_err(|e| what(limits::one_line(&e.to_string())))?;
    let bad = if t.dtype() == DType::F64 {
        t.flatten_all()?.to_vec1::<f64>()?.iter().position(|v| !v.is_finite())
    } else {
        t.to_dtype(DType::F32)?
            .flatten_all()?
            .to_vec1::<f32>()?
            .iter()
            .position(|v| !v.is_finite())
    };
    if let Some(i) = bad {
        return Err(what(format!("holds NaN or Inf (first at flat index {i})")));
    }
    Ok(t)
}

fn check_shape(name: &str, t: Tensor, s: &Shape, path: Option<&PathBuf>) -> Result<Tensor> {
    if t.shape() != s {
        let src = path.map(|p| format!("{}: ", p.display())).unwrap_or_default();
        return Err(err(format!(
            "{src}tensor `{name}` has shape {:?}, the model expects {:?}",
            t.dims(),
            s.dims()
        )));
    }
    Ok(t)
}

/// Draws an initial value following a candle `Init` hint, from our seeded RNG.
fn draw(rng: &mut Rng, s: &Shape, h: &Init, dtype: DType, dev: &Device) -> Result<Tensor> {
    match *h {
        Init::Const(v) => Tensor::full(v, s, dev)?.to_dtype(dtype),
        Init::Uniform { lo, up } => rng.rand_uniform(s.clone(), lo, up, dtype, dev),
        Init::Randn { mean, stdev } => rng.randn(s.clone(), dtype, dev)?.affine(stdev, mean),
        Init::Kaiming {
            dist,
            fan,
            non_linearity,
        } => {
            let fan = fan.for_shape(s);
            let gain = non_linearity.gain();
            let std = gain / (fan as f64).sqrt();
            match dist {
                candle_nn::init::NormalOrUniform::Uniform => {
                    let bound = 3f64.sqrt() * std;
                    rng.rand_uniform(s.clone(), -bound, bound, dtype, dev)
                }
                candle_nn::init::NormalOrUniform::Normal => rng.randn(s.clone(), dtype, dev)?.affine(std, 0.),
            }
        }
    }
}

impl SimpleBackend for ParamStore {
    fn get(&self, s: Shape, name: &str, h: Init, dtype: DType, dev: &Device) -> Result<Tensor> {
        self.make(&s, name, &h, dtype, dev)
    }

    fn get_unchecked(&self, name: &str, dtype: DType, dev: &Device) -> Result<Tensor> {
        let mut inner = self.inner.lock().expect("param store poisoned");
        if let Some(v) = inner.vars.get(name) {
            return Ok(v.as_tensor().clone());
        }
        if let Some(t) = inner.frozen.get(name) {
            return Ok(t.clone());
        }
        let t = match &inner.source {
            Source::File { path, tensors } => tensors
                .get(name)
                .ok_or_else(|| err(format!("{}: missing tensor `{name}`", path.display())))?
                .to_dtype(dtype)?
                .to_device(dev)?,
            Source::Init(_) => {
                return Err(err(format!(
                    "parameter `{name}` was asked for without a shape before it existed"
                )))
            }
        };
        inner.used.insert(name.to_string());
        if inner.trainable {
            let var = Var::from_tensor(&t)?;
            let out = var.as_tensor().clone();
            inner.vars.insert(name.to_string(), var);
            Ok(out)
        } else {
            inner.frozen.insert(name.to_string(), t.clone());
            Ok(t)
        }
    }

    fn contains_tensor(&self, name: &str) -> bool {
        let inner = self.inner.lock().expect("param store poisoned");
        match &inner.source {
            Source::Init(_) => inner.vars.contains_key(name) || inner.frozen.contains_key(name),
            Source::File { tensors, .. } => tensors.contains_key(name),
        }
    }
}

/// Writes named tensors to `path` as safetensors through a temp file and a
/// rename, so a crash never leaves a half-written file under the final name.
pub fn save_safetensors_atomic(tensors: &[(String, Tensor)], path: &Path) -> Result<()> {
    let map: std::collections::HashMap<String, Tensor> = tensors
        .iter()
        .map(|(k, t)| Ok((k.clone(), t.to_device(&Device::Cpu)?)))
        .collect::<Result<_>>()?;
    let tmp = tmp_path(path);
    candle_core::safetensors::save(&map, &tmp).map_err(|e| err(format!("{}: cannot write: {e}", tmp.display())))?;
    sync_file(&tmp)?;
    std::fs::rename(&tmp, path).map_err(|e| err(format!("cannot rename {} to {}: {e}", tmp.display(), path.display())))
}

/// Writes bytes to `path` through a temp file and a rename.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    let tmp = tmp_path(path);
    std::fs::write(&tmp, bytes).map_err(|e| err(format!("{}: cannot write: {e}", tmp.display())))?;
    sync_file(&tmp)?;
    std::fs::rename(&tmp, path).map_err(|e| err(format!("cannot rename {} to {}: {e}", tmp.display(), path.display())))
}

fn tmp_path(path: &Path) -> PathBuf {
    let mut name = path.file_name().map(|s| s.to_os_string()).unwrap_or_default();
    name.push(format!(".{}.tmp", std::process::id()));
    path.with_file_name(name)
}

fn sync_file(path: &Path) -> Result<()> {
    // Weights are meant to be shared: rw-r--r-- whatever the writer chose.
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let _ = std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o644));
    }
    let f = std::fs::File::open(path).map_err(|e| err(format!("{}: {e}", path.display())))?;
    f.sync_all().map_err(|e| err(format!("{}: fsync: {e}", path.display())))
}
