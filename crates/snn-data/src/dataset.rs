use crate::nmnist::{EventDataset, FRAME_SHAPE};
use crate::{Error, Result};

/// A labelled image dataset held as bytes: `len` images of shape `[C, H, W]` (row-major, `u8`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImageDataset {
    images: Vec<u8>,
    labels: Vec<u8>,
    shape: [usize; 3],
    classes: usize,
}

impl ImageDataset {
    /// A dataset from raw parts; checks that sizes agree and labels are below `classes`.
    pub fn new(images: Vec<u8>, labels: Vec<u8>, shape: [usize; 3], classes: usize) -> Result<Self> {
        let per: usize = shape.iter().product();
        if per == 0 || images.len() != per * labels.len() {
            return Err(Error::Mismatch(format!(
                "{} image bytes do not hold {} images of shape {shape:?}",
                images.len(),
                labels.len()
            )));
        }
        if let Some((i, l)) = labels.iter().enumerate().find(|(_, &l)| l as usize >= classes) {
            return Err(Error::Mismatch(format!("label {l} of sample {i} is not below {classes} classes")));
        }
        Ok(Self { images, labels, shape, classes })
    }

    /// Number of samples.
    pub fn len(&self) -> usize {
        self.labels.len()
    }

    /// Whether the dataset is empty.
    pub fn is_empty(&self) -> bool {
        self.labels.is_empty()
    }

    /// Per-sample shape `[C, H, W]`.
    pub fn shape(&self) -> [usize; 3] {
        self.shape
    }

    /// Number of classes.
    pub fn classes(&self) -> usize {
        self.classes
    }

    /// All labels.
    pub fn labels(&self) -> &[u8] {
        &self.labels
    }

    /// The bytes of image `i`.
    pub fn image(&self, i: usize) -> &[u8] {
        let per = self.shape.iter().product::<usize>();
        &self.images[i * per..(i + 1) * per]
    }

    /// Keeps only the first `n` samples (no-op when `n >= len`).
    pub fn truncate(&mut self, n: usize) {
        if n < self.len() {
            let per = self.shape.iter().product::<usize>();
            self.labels.truncate(n);
            self.images.truncate(n * per);
        }
    }

    /// Pixels of the given samples scaled to [0, 1] (`x / 255`), concatenated, with their labels.
    pub fn batch(&self, indices: &[usize]) -> (Vec<f32>, Vec<u32>) {
        self.batch_with(indices, |img| img.to_vec())
    }

    /// Like [`Self::batch`], with every image first passed through `transform` (e.g. augmentation), which
    /// must keep its size.
    pub fn batch_with(&self, indices: &[usize], mut transform: impl FnMut(&[u8]) -> Vec<u8>) -> (Vec<f32>, Vec<u32>) {
        let per = self.shape.iter().product::<usize>();
        let mut pixels = Vec::with_capacity(indices.len() * per);
        let mut labels = Vec::with_capacity(indices.len());
        for &i in indices {
            pixels.extend(transform(self.image(i)).iter().map(|&p| f32::from(p) / 255.0));
            labels.push(u32::from(self.labels[i]));
        }
        (pixels, labels)
    }
}

/// The samples of one split, in either of the two forms the networks consume.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Samples {
    /// Static images, turned into spikes by rate coding.
    Images(ImageDataset),
    /// Event recordings, already spikes once binned into frames.
    Events(EventDataset),
}

impl Samples {
    /// Number of samples.
    pub fn len(&self) -> usize {
        match self {
            Self::Images(d) => d.len(),
            Self::Events(d) => d.len(),
        }
    }

    /// Whether there are no samples.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The network input of one time step: `[C, H, W]`.
    pub fn input_shape(&self) -> [usize; 3] {
        match self {
            Self::Images(d) => d.shape(),
            Self::Events(_) => FRAME_SHAPE,
        }
    }

    /// Number of classes.
    pub fn classes(&self) -> usize {
        match self {
            Self::Images(d) => d.classes(),
            Self::Events(_) => 10,
        }
    }

    /// All labels.
    pub fn labels(&self) -> &[u8] {
        match self {
            Self::Images(d) => d.labels(),
            Self::Events(d) => d.labels(),
        }
    }

    /// Keeps only the first `n` samples.
    pub fn truncate(&mut self, n: usize) {
        match self {
            Self::Images(d) => d.truncate(n),
            Self::Events(d) => d.truncate(n),
        }
    }
}

impl From<ImageDataset> for Samples {
    fn from(d: ImageDataset) -> Self {
        Self::Images(d)
    }
}

impl From<EventDataset> for Samples {
    fn from(d: EventDataset) -> Self {
        Self::Events(d)
    }
}
