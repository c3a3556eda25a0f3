//! Convolutions in MLX's channels-last layout (python `mlx.nn.Conv1d`,
//! `nn.Conv2d`, `nn.ConvTranspose1d`, `nn.ConvTranspose2d`): inputs are
//! `NLC` / `NHWC`, weights `[out, k, in / groups]` / `[out, kh, kw, in /
//! groups]` (transposed: `[out, k, in]`), over `mx.conv1d` /
//! `mx.conv2d` / `mx.conv_transpose1d` / `mx.conv_transpose2d`.

use mlxrs_core::{Array, Dtype, Error, Result, ops};

use crate::linear::uniform_init;
use crate::module::{Frozen, Module, Weights, join};

/// Weight + optional bias shared by the convolution layers.
struct ConvParams {
  weight: Array,
  bias: Option<Array>,
  has_bias: bool,
  wshape: Vec<i32>,
  frozen: Frozen,
}

impl ConvParams {
  fn new(wshape: Vec<i32>, bias: bool) -> ConvParams {
    ConvParams {
      weight: Array::scalar(0.0f32),
      bias: None,
      has_bias: bias,
      wshape,
      frozen: Frozen::default(),
    }
  }

  /// python init: weight `uniform(-scale, scale)`, bias zeros.
  fn init(&mut self, scale: f32, key: Option<&Array>) -> Result<()> {
    self.weight = uniform_init(&self.wshape, scale, key)?;
    if self.has_bias {
      self.bias = Some(ops::zeros(&[self.wshape[0]], Dtype::Float32)?);
    }
    Ok(())
  }

  fn add_bias(&self, y: Array) -> Result<Array> {
    match &self.bias {
      Some(b) => ops::add(&y, b),
      None => Ok(y),
    }
  }

  fn set_weight(&mut self, weight: Array, bias: Option<Array>) -> Result<()> {
    if weight.shape() != self.wshape {
      return Err(Error::InvalidArgument(format!(
        "convolution weight has shape {:?}, expected {:?}",
        weight.shape(),
        self.wshape
      )));
    }
    if let Some(b) = &bias {
      if b.shape() != [self.wshape[0]] {
        return Err(Error::InvalidArgument(format!(
          "convolution bias has shape {:?}, expected [{}]",
          b.shape(),
          self.wshape[0]
        )));
      }
    }
    self.has_bias = bias.is_some();
    self.weight = weight;
    self.bias = bias;
    Ok(())
  }
}

impl Module for ConvParams {
  fn load(&mut self, w: &mut Weights, prefix: &str) {
    self.weight = w.take(&join(prefix, "weight"), Some(&self.wshape));
    self.bias = if self.has_bias {
      Some(w.take(&join(prefix, "bias"), Some(&[self.wshape[0]])))
    } else {
      None
    };
  }
  fn visit(&self, prefix: &str, f: &mut dyn FnMut(&str, &Array)) {
    f(&join(prefix, "weight"), &self.weight);
    if let Some(b) = &self.bias {
      f(&join(prefix, "bias"), b);
    }
  }
  fn visit_mut(&mut self, prefix: &str, f: &mut dyn FnMut(&str, &mut Array, &mut bool)) {
    self.frozen.visit_mut(prefix, "weight", &mut self.weight, f);
    if let Some(b) = &mut self.bias {
      self.frozen.visit_mut(prefix, "bias", b, f);
    }
  }
  fn visit_frozen(&self, prefix: &str, f: &mut dyn FnMut(&str, &Array, bool)) {
    self.frozen.visit(prefix, "weight", &self.weight, f);
    if let Some(b) = &self.bias {
      self.frozen.visit(prefix, "bias", b, f);
    }
  }
}

macro_rules! delegate_module {
  ($ty:ty) => {
    impl Module for $ty {
      fn load(&mut self, w: &mut Weights, prefix: &str) {
        self.p.load(w, prefix)
      }
      fn visit(&self, prefix: &str, f: &mut dyn FnMut(&str, &Array)) {
        self.p.visit(prefix, f)
      }
      fn visit_mut(&mut self, prefix: &str, f: &mut dyn FnMut(&str, &mut Array, &mut bool)) {
        self.p.visit_mut(prefix, f)
      }
      fn visit_frozen(&self, prefix: &str, f: &mut dyn FnMut(&str, &Array, bool)) {
        self.p.visit_frozen(prefix, f)
      }
    }

    impl $ty {
      /// The weight.
      pub fn weight(&self) -> &Array {
        &self.p.weight
      }
      /// The bias, if any.
      pub fn bias(&self) -> Option<&Array> {
        self.p.bias.as_ref()
      }
      /// Set the weight (shape-checked against the layer) and bias.
      pub fn set_weights(&mut self, weight: Array, bias: Option<Array>) -> Result<()> {
        self.p.set_weight(weight, bias)
      }
    }
  };
}

fn check_positive(what: &str, vals: &[(&str, i32)], min: i32) -> Result<()> {
  for (n, v) in vals {
    if *v < min {
      return Err(Error::InvalidArgument(format!(
        "{what}: {n} must be >= {min}, got {v}"
      )));
    }
  }
  Ok(())
}

fn check_input(what: &str, x: &Array, ndim: usize, channels: i32) -> Result<()> {
  if x.ndim() != ndim || x.dim(-1) != Some(channels) {
    let layout = if ndim == 3 {
      "[N, L, C]"
    } else {
      "[N, H, W, C]"
    };
    return Err(Error::InvalidArgument(format!(
      "{what}: expected input {layout} with C = {channels}, got {:?}",
      x.shape()
    )));
  }
  Ok(())
}

/// 1-D convolution over `[N, L, C_in]` (python `nn.Conv1d(in_channels,
/// out_channels, kernel_size, stride, padding, dilation, groups, bias)`).
pub struct Conv1d {
  /// Input channels.
  pub in_channels: i32,
  /// Output channels.
  pub out_channels: i32,
  /// Kernel width.
  pub kernel_size: i32,
  /// Stride.
  pub stride: i32,
  /// Zero padding on both sides.
  pub padding: i32,
  /// Kernel dilation.
  pub dilation: i32,
  /// Channel groups.
  pub groups: i32,
  p: ConvParams,
}
delegate_module!(Conv1d);

impl Conv1d {
  /// An unloaded layer (weight `[out, kernel, in / groups]`).
  #[allow(clippy::too_many_arguments)]
  pub fn new(
    in_channels: i32,
    out_channels: i32,
    kernel_size: i32,
    stride: i32,
    padding: i32,
    dilation: i32,
    groups: i32,
    bias: bool,
  ) -> Result<Conv1d> {
    let what = "Conv1d";
    check_positive(
      what,
      &[
        ("in_channels", in_channels),
        ("out_channels", out_channels),
        ("kernel_size", kernel_size),
      ],
      1,
    )?;
    check_positive(
      what,
      &[
        ("stride", stride),
        ("dilation", dilation),
        ("groups", groups),
      ],
      1,
    )?;
    check_positive(what, &[("padding", padding)], 0)?;
    if in_channels % groups != 0 {
      return Err(Error::InvalidArgument(format!(
        "Conv1d: in_channels ({in_channels}) must be divisible by groups ({groups})"
      )));
    }
    let p = ConvParams::new(vec![out_channels, kernel_size, in_channels / groups], bias);
    Ok(Conv1d {
      in_channels,
      out_channels,
      kernel_size,
      stride,
      padding,
      dilation,
      groups,
      p,
    })
  }

  /// A freshly initialised layer (python init: `uniform(±sqrt(1 / (in /
  /// groups * k)))`, bias zeros), from `key` or the global key.
  #[allow(clippy::too_many_arguments)]
  pub fn init(
    in_channels: i32,
    out_channels: i32,
    kernel_size: i32,
    stride: i32,
    padding: i32,
    dilation: i32,
    groups: i32,
    bias: bool,
    key: Option<&Array>,
  ) -> Result<Conv1d> {
    let mut c = Conv1d::new(
      in_channels,
      out_channels,
      kernel_size,
      stride,
      padding,
      dilation,
      groups,
      bias,
    )?;
    c.p.init(
      (1.0 / (in_channels / groups * kernel_size) as f32).sqrt(),
      key,
    )?;
    Ok(c)
  }

  /// `[N, L, in]` -> `[N, L_out, out]`.
  pub fn forward(&self, x: &Array) -> Result<Array> {
    check_input("Conv1d", x, 3, self.in_channels)?;
    let y = ops::conv1d(
      x,
      &self.p.weight,
      self.stride,
      self.padding,
      self.dilation,
      self.groups,
    )?;
    self.p.add_bias(y)
  }
}

/// 2-D convolution over `[N, H, W, C_in]` (python `nn.Conv2d`).
pub struct Conv2d {
  /// Input channels.
  pub in_channels: i32,
  /// Output channels.
  pub out_channels: i32,
  /// Kernel `(h, w)`.
  pub kernel_size: (i32, i32),
  /// Stride `(h, w)`.
  pub stride: (i32, i32),
  /// Zero padding `(h, w)`, both sides.
  pub padding: (i32, i32),
  /// Kernel dilation `(h, w)`.
  pub dilation: (i32, i32),
  /// Channel groups.
  pub groups: i32,
  p: ConvParams,
}
delegate_module!(Conv2d);

impl Conv2d {
  /// An unloaded layer (weight `[out, kh, kw, in / groups]`).
  #[allow(clippy::too_many_arguments)]
  pub fn new(
    in_channels: i32,
    out_channels: i32,
    kernel_size: (i32, i32),
    stride: (i32, i32),
    padding: (i32, i32),
    dilation: (i32, i32),
    groups: i32,
    bias: bool,
  ) -> Result<Conv2d> {
    let what = "Conv2d";
    check_positive(
      what,
      &[
        ("in_channels", in_channels),
        ("out_channels", out_channels),
        ("kernel_size", kernel_size.0),
        ("kernel_size", kernel_size.1),
        ("stride", stride.0),
        ("stride", stride.1),
        ("dilation", dilation.0),
        ("dilation", dilation.1),
        ("groups", groups),
      ],
      1,
    )?;
    check_positive(what, &[("padding", padding.0), ("padding", padding.1)], 0)?;
    if in_channels % groups != 0 {
      return Err(Error::InvalidArgument(format!(
        "Conv2d: in_channels ({in_channels}) must be divisible by groups ({groups})"
      )));
    }
    let p = ConvParams::new(
      vec![
        out_channels,
        kernel_size.0,
        kernel_size.1,
        in_channels / groups,
      ],
      bias,
    );
    Ok(Conv2d {
      in_channels,
      out_channels,
      kernel_size,
      stride,
      padding,
      dilation,
      groups,
      p,
    })
  }

  /// A freshly initialised layer (python init), from `key` or the global key.
  #[allow(clippy::too_many_arguments)]
  pub fn init(
    in_channels: i32,
    out_channels: i32,
    kernel_size: (i32, i32),
    stride: (i32, i32),
    padding: (i32, i32),
    dilation: (i32, i32),
    groups: i32,
    bias: bool,
    key: Option<&Array>,
  ) -> Result<Conv2d> {
    let mut c = Conv2d::new(
      in_channels,
      out_channels,
      kernel_size,
      stride,
      padding,
      dilation,
      groups,
      bias,
    )?;
    let fan = in_channels / groups * kernel_size.0 * kernel_size.1;
    c.p.init((1.0 / fan as f32).sqrt(), key)?;
    Ok(c)
  }

  /// `[N, H, W, in]` -> `[N, H_out, W_out, out]`.
  pub fn forward(&self, x: &Array) -> Result<Array> {
    check_input("Conv2d", x, 4, self.in_channels)?;
    let y = ops::conv2d(
      x,
      &self.p.weight,
      self.stride,
      self.padding,
      self.dilation,
      self.groups,
    )?;
    self.p.add_bias(y)
  }
}

/// 1-D transposed convolution over `[N, L, C_in]` (python
/// `nn.ConvTranspose1d(in_channels, out_channels, kernel_size, stride,
/// padding, dilation, output_padding, bias)`); weight `[out, k, in]`.
pub struct ConvTranspose1d {
  /// Input channels.
  pub in_channels: i32,
  /// Output channels.
  pub out_channels: i32,
  /// Kernel width.
  pub kernel_size: i32,
  /// Stride.
  pub stride: i32,
  /// Padding.
  pub padding: i32,
  /// Dilation.
  pub dilation: i32,
  /// Extra size added to one side of the output.
  pub output_padding: i32,
  p: ConvParams,
}
delegate_module!(ConvTranspose1d);

impl ConvTranspose1d {
  /// An unloaded layer.
  #[allow(clippy::too_many_arguments)]
  pub fn new(
    in_channels: i32,
    out_channels: i32,
    kernel_size: i32,
    stride: i32,
    padding: i32,
    dilation: i32,
    output_padding: i32,
    bias: bool,
  ) -> Result<ConvTranspose1d> {
    let what = "ConvTranspose1d";
    check_positive(
      what,
      &[
        ("in_channels", in_channels),
        ("out_channels", out_channels),
        ("kernel_size", kernel_size),
        ("stride", stride),
        ("dilation", dilation),
      ],
      1,
    )?;
    check_positive(
      what,
      &[("padding", padding), ("output_padding", output_padding)],
      0,
    )?;
    let p = ConvParams::new(vec![out_channels, kernel_size, in_channels], bias);
    Ok(ConvTranspose1d {
      in_channels,
      out_channels,
      kernel_size,
      stride,
      padding,
      dilation,
      output_padding,
      p,
    })
  }

  /// A freshly initialised layer (python init: `uniform(±sqrt(1 / (in *
  /// k)))`, bias zeros).
  #[allow(clippy::too_many_arguments)]
  pub fn init(
    in_channels: i32,
    out_channels: i32,
    kernel_size: i32,
    stride: i32,
    padding: i32,
    dilation: i32,
    output_padding: i32,
    bias: bool,
    key: Option<&Array>,
  ) -> Result<ConvTranspose1d> {
    let mut c = ConvTranspose1d::new(
      in_channels,
      out_channels,
      kernel_size,
      stride,
      padding,
      dilation,
      output_padding,
      bias,
    )?;
    c.p
      .init((1.0 / (in_channels * kernel_size) as f32).sqrt(), key)?;
    Ok(c)
  }

  /// `[N, L, in]` -> `[N, L_out, out]`.
  pub fn forward(&self, x: &Array) -> Result<Array> {
    check_input("ConvTranspose1d", x, 3, self.in_channels)?;
    let y = ops::conv_transpose1d(
      x,
      &self.p.weight,
      self.stride,
      self.padding,
      self.dilation,
      self.output_padding,
      1,
    )?;
    self.p.add_bias(y)
  }
}

/// 2-D transposed convolution over `[N, H, W, C_in]` (python
/// `nn.ConvTranspose2d`); weight `[out, kh, kw, in]`.
pub struct ConvTranspose2d {
  /// Input channels.
  pub in_channels: i32,
  /// Output channels.
  pub out_channels: i32,
  /// Kernel `(h, w)`.
  pub kernel_size: (i32, i32),
  /// Stride.
  pub stride: (i32, i32),
  /// Padding.
  pub padding: (i32, i32),
  /// Dilation.
  pub dilation: (i32, i32),
  /// Extra output size.
  pub output_padding: (i32, i32),
  p: ConvParams,
}
delegate_module!(ConvTranspose2d);

impl ConvTranspose2d {
  /// An unloaded layer.
  #[allow(clippy::too_many_arguments)]
  pub fn new(
    in_channels: i32,
    out_channels: i32,
    kernel_size: (i32, i32),
    stride: (i32, i32),
    padding: (i32, i32),
    dilation: (i32, i32),
    output_padding: (i32, i32),
    bias: bool,
  ) -> Result<ConvTranspose2d> {
    let what = "ConvTranspose2d";
    check_positive(
      what,
      &[
        ("in_channels", in_channels),
        ("out_channels", out_channels),
        ("kernel_size", kernel_size.0),
        ("kernel_size", kernel_size.1),
        ("stride", stride.0),
        ("stride", stride.1),
        ("dilation", dilation.0),
        ("dilation", dilation.1),
      ],
      1,
    )?;
    check_positive(
      what,
      &[
        ("padding", padding.0),
        ("padding", padding.1),
        ("output_padding", output_padding.0),
        ("output_padding", output_padding.1),
      ],
      0,
    )?;
    let p = ConvParams::new(
      vec![out_channels, kernel_size.0, kernel_size.1, in_channels],
      bias,
    );
    Ok(ConvTranspose2d {
      in_channels,
      out_channels,
      kernel_size,
      stride,
      padding,
      dilation,
      output_padding,
      p,
    })
  }

  /// `[N, H, W, in]` -> `[N, H_out, W_out, out]`.
  pub fn forward(&self, x: &Array) -> Result<Array> {
    check_input("ConvTranspose2d", x, 4, self.in_channels)?;
    let y = ops::conv_transpose2d(
      x,
      &self.p.weight,
      self.stride,
      self.padding,
      self.dilation,
      self.output_padding,
      1,
    )?;
    self.p.add_bias(y)
  }
}

/// `conv1d(x, w, stride, padding, dilation)` (groups 1) as an explicit
/// im2col + one matrix product: `x` `[B, L, C_in]`, `w` `[C_out, K, C_in]`.
/// Same result as `mx.conv1d`; on the CPU it takes the BLAS path also for
/// dilated kernels, which MLX's CPU backend runs as a direct loop.
pub fn conv1d_im2col(
  x: &Array,
  w: &Array,
  stride: i32,
  padding: i32,
  dilation: i32,
) -> Result<Array> {
  let (xs, ws) = (x.shape(), w.shape());
  if xs.len() != 3 || ws.len() != 3 || xs[2] != ws[2] || stride < 1 || dilation < 1 || padding < 0 {
    return Err(Error::InvalidArgument(format!(
      "conv1d_im2col: x {xs:?} w {ws:?} stride {stride} padding {padding} dilation {dilation}"
    )));
  }
  let (b, l, cin) = (xs[0], xs[1], xs[2]);
  let (cout, k) = (ws[0], ws[1]);
  let lp = l + 2 * padding;
  let span = dilation * (k - 1) + 1;
  if lp < span {
    return Err(Error::InvalidArgument(format!(
      "conv1d_im2col: input length {l} too short for kernel {k} dilation {dilation}"
    )));
  }
  let lout = (lp - span) / stride + 1;
  let xp = if padding > 0 {
    crate::conv::pad_len(x, padding, padding)?
  } else {
    x.clone()
  };
  let cols: Vec<Array> = (0..k)
    .map(|j| {
      let s0 = j * dilation;
      ops::slice(
        &xp,
        &[0, s0, 0],
        &[b, s0 + (lout - 1) * stride + 1, cin],
        &[1, stride, 1],
      )
    })
    .collect::<Result<_>>()?;
  let col = ops::reshape(&ops::stack_axis(&cols, 2)?, &[b, lout, k * cin])?;
  let wm = ops::transpose(&ops::reshape(w, &[cout, k * cin])?)?;
  ops::matmul(&col, &wm)
}

/// Zero-pads axis 1 of `[B, L, C]` by `lo` / `hi`.
fn pad_len(x: &Array, lo: i32, hi: i32) -> Result<Array> {
  ops::pad(x, &[1], &[lo], &[hi], &Array::scalar(0.0f32), "constant")
}

/// `conv_transpose1d(x, w, stride, padding, 1, output_padding)` (groups 1)
/// as one matrix product and a strided overlap-add: `x` `[B, L, C_in]`, `w`
/// `[C_out, K, C_in]` (MLX layout). Same result as `mx.conv_transpose1d`
/// (torch `ConvTranspose1d`), on the BLAS path on the CPU.
pub fn conv_transpose1d_gemm(
  x: &Array,
  w: &Array,
  stride: i32,
  padding: i32,
  output_padding: i32,
) -> Result<Array> {
  let (xs, ws) = (x.shape(), w.shape());
  if xs.len() != 3
    || ws.len() != 3
    || xs[2] != ws[2]
    || stride < 1
    || padding < 0
    || output_padding < 0
  {
    return Err(Error::InvalidArgument(format!(
      "conv_transpose1d_gemm: x {xs:?} w {ws:?} stride {stride} padding {padding}"
    )));
  }
  let (b, l, cin) = (xs[0], xs[1], xs[2]);
  let (cout, k) = (ws[0], ws[1]);
  let lout = (l - 1) * stride - 2 * padding + k + output_padding;
  if lout < 1 {
    return Err(Error::InvalidArgument(format!(
      "conv_transpose1d_gemm: empty output for input length {l}"
    )));
  }
  let n = (k + stride - 1) / stride;
  // [C_in, K * C_out]
  let wm = ops::reshape(&ops::transpose_axes(w, &[2, 1, 0])?, &[cin, k * cout])?;
  let y = ops::reshape(&ops::matmul(x, &wm)?, &[b, l, k, cout])?;
  let y = if n * stride > k {
    ops::pad(
      &y,
      &[2],
      &[0],
      &[n * stride - k],
      &Array::scalar(0.0f32),
      "constant",
    )?
  } else {
    y
  };
  let y = ops::reshape(&y, &[b, l, n, stride, cout])?;
  let full_len = (l + n - 1) * stride;
  let mut acc: Option<Array> = None;
  for c in 0..n {
    let ch = ops::slice(
      &y,
      &[0, 0, c, 0, 0],
      &[b, l, c + 1, stride, cout],
      &[1, 1, 1, 1, 1],
    )?;
    let ch = ops::reshape(&ch, &[b, l * stride, cout])?;
    let ch = pad_len(&ch, c * stride, (n - 1 - c) * stride)?;
    acc = Some(match acc {
      None => ch,
      Some(a) => ops::add(&a, &ch)?,
    });
  }
  let full =
    acc.ok_or_else(|| Error::InvalidArgument("conv_transpose1d_gemm: empty kernel".into()))?;
  let end = padding + lout;
  let full = if end > full_len {
    pad_len(&full, 0, end - full_len)?
  } else {
    full
  };
  ops::slice(&full, &[0, padding, 0], &[b, end, cout], &[1, 1, 1])
}
