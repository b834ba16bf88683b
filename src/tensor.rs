//! Host-side tensors. Every activation in this crate is NHWC, f32.

/// Shape of an NHWC tensor.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Shape {
    pub n: usize,
    pub h: usize,
    pub w: usize,
    pub c: usize,
}

impl Shape {
    pub const fn new(n: usize, h: usize, w: usize, c: usize) -> Self {
        Shape { n, h, w, c }
    }
    pub const fn len(&self) -> usize {
        self.n * self.h * self.w * self.c
    }
    pub const fn is_empty(&self) -> bool {
        self.len() == 0
    }
    /// Elements of one image (h*w*c).
    pub const fn image_len(&self) -> usize {
        self.h * self.w * self.c
    }
    /// The shape of one image of this batch.
    pub const fn one(&self) -> Shape {
        Shape { n: 1, ..*self }
    }
}

impl std::fmt::Display for Shape {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "[{}, {}, {}, {}]", self.n, self.h, self.w, self.c)
    }
}

/// A tensor in host memory, NHWC.
#[derive(Clone, Debug, PartialEq)]
pub struct HostTensor {
    pub shape: Shape,
    pub data: Vec<f32>,
}

impl HostTensor {
    pub fn new(shape: Shape, data: Vec<f32>) -> Self {
        assert_eq!(
            shape.len(),
            data.len(),
            "HostTensor data does not match shape {shape}"
        );
        HostTensor { shape, data }
    }
    pub fn zeros(shape: Shape) -> Self {
        HostTensor {
            shape,
            data: vec![0.0; shape.len()],
        }
    }
    /// Image `i` of the batch as its own tensor.
    pub fn image(&self, i: usize) -> HostTensor {
        let len = self.shape.image_len();
        HostTensor::new(self.shape.one(), self.data[i * len..(i + 1) * len].to_vec())
    }
    /// Stack tensors of identical per-image shape into one batch.
    pub fn stack(parts: &[HostTensor]) -> HostTensor {
        let first = parts[0].shape;
        let mut data = Vec::with_capacity(first.image_len() * parts.len());
        let mut n = 0;
        for p in parts {
            assert_eq!(
                (p.shape.h, p.shape.w, p.shape.c),
                (first.h, first.w, first.c)
            );
            data.extend_from_slice(&p.data);
            n += p.shape.n;
        }
        HostTensor::new(Shape { n, ..first }, data)
    }
}

/// max|a-b| / max|b|: the relative error used by every parity test.
/// Returns +inf on a shape mismatch so a test cannot pass by accident.
pub fn max_rel_err(a: &[f32], b: &[f32]) -> f64 {
    if a.len() != b.len() || a.is_empty() {
        return f64::INFINITY;
    }
    let mut num = 0f64;
    let mut den = 0f64;
    for (&x, &y) in a.iter().zip(b) {
        if !x.is_finite() || !y.is_finite() {
            return f64::INFINITY;
        }
        num = num.max((x as f64 - y as f64).abs());
        den = den.max((y as f64).abs());
    }
    if den == 0.0 {
        num
    } else {
        num / den
    }
}

/// ||a-b||_2 / ||b||_2.
pub fn rel_l2_err(a: &[f32], b: &[f32]) -> f64 {
    if a.len() != b.len() || a.is_empty() {
        return f64::INFINITY;
    }
    let (mut num, mut den) = (0f64, 0f64);
    for (&x, &y) in a.iter().zip(b) {
        let d = x as f64 - y as f64;
        num += d * d;
        den += (y as f64) * (y as f64);
    }
    if !num.is_finite() {
        return f64::INFINITY;
    }
    if den == 0.0 {
        num.sqrt()
    } else {
        (num / den).sqrt()
    }
}
