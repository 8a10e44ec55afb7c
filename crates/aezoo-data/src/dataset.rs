//! In-memory image data sets: u8 pixels in `(n, c, h, w)` order with labels,
//! and the train/test pair a source yields.

use std::sync::Arc;

use aezoo_nn::Rng;
use candle_core::{Device, Tensor};

use crate::error::{DataError, Result};
use crate::source::Source;

/// `len` images of `channels × height × width` u8 pixels, with labels; and,
/// for random-crop training, each image's larger source picture.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ImageSet {
    pixels: Vec<u8>,
    labels: Vec<u8>,
    len: usize,
    channels: usize,
    height: usize,
    width: usize,
    crops: Option<Arc<Vec<Picture>>>,
    crops_per_picture: usize,
}

/// A picture larger than the model's input (`c × h × w` bytes, channel-major)
/// that training batches cut random windows from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Picture {
    pub pixels: Vec<u8>,
    pub height: usize,
    pub width: usize,
}

impl ImageSet {
    /// Wraps pixels in `(n, c, h, w)` order; `labels` may be empty.
    pub fn new(pixels: Vec<u8>, labels: Vec<u8>, len: usize, [channels, height, width]: [usize; 3]) -> Result<Self> {
        if pixels.len() != len * channels * height * width {
            return Err(DataError::Invalid(format!(
                "image set: {} pixels for {len} images of {channels}x{height}x{width}",
                pixels.len()
            )));
        }
        if !labels.is_empty() && labels.len() != len {
            return Err(DataError::Invalid(format!(
                "image set: {} labels for {len} images",
                labels.len()
            )));
        }
        Ok(Self {
            pixels,
            labels,
            len,
            channels,
            height,
            width,
            crops: None,
            crops_per_picture: 1,
        })
    }

    /// Attaches one source picture per image, each at least the image size:
    /// training then batches random crops of them ([`ImageSet::random_crops`]),
    /// evaluation the fixed images.
    pub fn with_crops(mut self, pictures: Vec<Picture>) -> Result<Self> {
        if pictures.len() != self.len {
            return Err(DataError::Invalid(format!(
                "{} pictures for {} images",
                pictures.len(),
                self.len
            )));
        }
        for p in &pictures {
            if p.height < self.height || p.width < self.width || p.pixels.len() != self.channels * p.height * p.width {
                return Err(DataError::Invalid(format!(
                    "a {}x{} picture cannot give {}x{} crops",
                    p.height, p.width, self.height, self.width
                )));
            }
        }
        self.crops = Some(Arc::new(pictures));
        Ok(self)
    }

    /// Draw `n` crops of each picture per epoch ([`ImageSet::epoch_len`]).
    pub fn with_crops_per_picture(mut self, n: usize) -> Self {
        self.crops_per_picture = n.max(1);
        self
    }

    /// Items in one training epoch: `len`, times the crops per picture when
    /// batches are random crops (index `i` crops picture `i mod len`).
    pub fn epoch_len(&self) -> usize {
        if self.crops.is_some() {
            self.len * self.crops_per_picture
        } else {
            self.len
        }
    }

    /// Whether training batches are random crops.
    pub fn has_crops(&self) -> bool {
        self.crops.is_some()
    }

    /// Random `h × w` windows (one per index, positions drawn from `rng`) of
    /// the source pictures, as a `(b, c, h, w)` f32 tensor in `[0, 1]`;
    /// without source pictures, [`ImageSet::batch`].
    pub fn random_crops(&self, indices: &[usize], rng: &mut Rng, dev: &Device) -> Result<Tensor> {
        let Some(pics) = &self.crops else {
            return self.batch(indices, dev);
        };
        let (c, h, w) = (self.channels, self.height, self.width);
        let mut v = Vec::with_capacity(indices.len() * c * h * w);
        for &i in indices {
            let p = pics
                .get(if pics.is_empty() { i } else { i % pics.len() })
                .ok_or_else(|| DataError::Invalid(format!("image index {i} out of range for a set of {}", self.len)))?;
            let y0 = rng.below((p.height - h + 1) as u64) as usize;
            let x0 = rng.below((p.width - w + 1) as u64) as usize;
            for ch in 0..c {
                let plane = &p.pixels[ch * p.height * p.width..(ch + 1) * p.height * p.width];
                for y in y0..y0 + h {
                    v.extend(
                        plane[y * p.width + x0..y * p.width + x0 + w]
                            .iter()
                            .map(|&q| q as f32 * (1.0 / 255.0)),
                    );
                }
            }
        }
        let t = Tensor::from_vec(v, (indices.len(), c, h, w), &Device::Cpu)?;
        Ok(t.to_device(dev)?)
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// `[channels, height, width]`.
    pub fn image_shape(&self) -> [usize; 3] {
        [self.channels, self.height, self.width]
    }

    fn image_len(&self) -> usize {
        self.channels * self.height * self.width
    }

    /// The pixels of image `i`.
    pub fn image(&self, i: usize) -> &[u8] {
        let n = self.image_len();
        &self.pixels[i * n..(i + 1) * n]
    }

    pub fn labels(&self) -> &[u8] {
        &self.labels
    }

    /// The first `n` images (all of them if `n >= len`).
    pub fn take(&self, n: usize) -> Self {
        self.slice(0, n)
    }

    /// Up to `n` images from index `start` on.
    pub fn slice(&self, start: usize, n: usize) -> Self {
        let start = start.min(self.len);
        let end = start + n.min(self.len - start);
        let il = self.image_len();
        Self {
            pixels: self.pixels[start * il..end * il].to_vec(),
            labels: if self.labels.is_empty() {
                vec![]
            } else {
                self.labels[start..end].to_vec()
            },
            len: end - start,
            crops: self.crops.as_ref().map(|p| Arc::new(p[start..end].to_vec())),
            ..*self
        }
    }

    /// The images at `indices` as a `(b, c, h, w)` f32 tensor in `[0, 1]`.
    pub fn batch(&self, indices: &[usize], dev: &Device) -> Result<Tensor> {
        let n = self.image_len();
        let mut v = Vec::with_capacity(indices.len() * n);
        for &i in indices {
            if i >= self.len {
                return Err(DataError::Invalid(format!(
                    "image index {i} out of range for a set of {}",
                    self.len
                )));
            }
            v.extend(self.image(i).iter().map(|&p| p as f32 * (1.0 / 255.0)));
        }
        let t = Tensor::from_vec(v, (indices.len(), self.channels, self.height, self.width), &Device::Cpu)?;
        Ok(t.to_device(dev)?)
    }
}

/// A data set's train and test splits and where they came from.
#[derive(Clone, Debug)]
pub struct Splits {
    pub name: String,
    pub train: ImageSet,
    pub test: ImageSet,
    pub source: Source,
}

impl Splits {
    /// A one-line description for logs: name, sizes, source.
    pub fn describe(&self) -> String {
        format!(
            "{}: {} train / {} test images of {:?}, {}",
            self.name,
            self.train.len(),
            self.test.len(),
            self.train.image_shape(),
            self.source
        )
    }
}
