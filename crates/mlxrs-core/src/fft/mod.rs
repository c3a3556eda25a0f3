//! Fast Fourier transforms: python `mx.fft`, swift `MLXFFT`.
//!
//! Generated from MLX's `fft.h` (see [`crate::ops`] for the naming scheme):
//! `fft`, `rfft`, `fft2`, `fftn`, their inverses, `fftfreq`, `fftshift`,
//! `stft` / `istft`. The normalization is [`FftNorm`].

#[rustfmt::skip]
mod generated;

pub use generated::*;
