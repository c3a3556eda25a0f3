//! Devices: python `mx.Device` / `mx.cpu` / `mx.gpu`, `mx.default_device()`,
//! `mx.set_default_device()`, `mx.is_available()`; swift `Device`.

use crate::error::{Result, check};
use crate::string::MlxString;

/// CPU or GPU (Metal on macOS, CUDA on Linux + NVIDIA).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum DeviceType {
  /// `mx.cpu`
  Cpu,
  /// `mx.gpu`
  Gpu,
}

impl DeviceType {
  fn raw(self) -> mlxrs_sys::mlx_device_type {
    match self {
      DeviceType::Cpu => mlxrs_sys::mlx_device_type::MLX_CPU,
      DeviceType::Gpu => mlxrs_sys::mlx_device_type::MLX_GPU,
    }
  }
}

/// A device: type and index.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Device {
  /// CPU or GPU.
  pub kind: DeviceType,
  /// Index among devices of that type.
  pub index: i32,
}

pub(crate) struct RawDevice(pub(crate) mlxrs_sys::mlx_device);

impl Drop for RawDevice {
  fn drop(&mut self) {
    // SAFETY: owned handle; NULL ctx accepted.
    unsafe { mlxrs_sys::mlx_device_free(self.0) };
  }
}

impl RawDevice {
  pub(crate) fn to_device(&self) -> Result<Device> {
    let mut t = mlxrs_sys::mlx_device_type::MLX_CPU;
    let mut index = 0;
    // SAFETY: live handle; plain out-pointers to locals.
    check(unsafe { mlxrs_sys::mlx_device_get_type(&mut t, self.0) })?;
    // SAFETY: as above.
    check(unsafe { mlxrs_sys::mlx_device_get_index(&mut index, self.0) })?;
    let kind = if t == mlxrs_sys::mlx_device_type::MLX_GPU {
      DeviceType::Gpu
    } else {
      DeviceType::Cpu
    };
    Ok(Device { kind, index })
  }
}

impl Device {
  /// The CPU (`mx.cpu`).
  pub const CPU: Device = Device {
    kind: DeviceType::Cpu,
    index: 0,
  };
  /// The first GPU (`mx.gpu`).
  pub const GPU: Device = Device {
    kind: DeviceType::Gpu,
    index: 0,
  };

  pub(crate) fn raw(self) -> RawDevice {
    // SAFETY: plain value arguments; returns an owned handle.
    RawDevice(unsafe { mlxrs_sys::mlx_device_new_type(self.kind.raw(), self.index) })
  }

  /// Whether the loaded libmlx has this device type (python
  /// `mx.is_available(mx.gpu)`): `false` for GPU with the CPU wheel.
  pub fn is_available(kind: DeviceType) -> bool {
    let mut res = false;
    // SAFETY: plain out-pointer to a local.
    let rc = unsafe { mlxrs_sys::mlxrs_device_is_available(&mut res, kind.raw()) };
    rc == 0 && res
  }

  /// The calling thread's default device (`mx.default_device()`).
  pub fn default_device() -> Result<Device> {
    // SAFETY: returns a NULL-ctx handle, filled below.
    let mut d = RawDevice(unsafe { mlxrs_sys::mlx_device_new() });
    // SAFETY: out-handle owned by `d`.
    check(unsafe { mlxrs_sys::mlx_get_default_device(&mut d.0) })?;
    d.to_device()
  }

  /// Whether the calling thread's default device is a GPU (python
  /// `mx.default_device().type == mx.gpu`); `false` if it cannot be read.
  pub fn default_is_gpu() -> bool {
    Device::default_device().is_ok_and(|d| d.kind == DeviceType::Gpu)
  }

  /// Set the default device (`mx.set_default_device`). Errors if the device
  /// is not available.
  pub fn set_default(self) -> Result<()> {
    let d = self.raw();
    // SAFETY: `d` is a live owned handle.
    check(unsafe { mlxrs_sys::mlx_set_default_device(d.0) })
  }
}

impl std::fmt::Display for Device {
  fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
    let d = self.raw();
    let mut s = MlxString::new();
    // SAFETY: live handles; the string out-handle is owned by `s`.
    if unsafe { mlxrs_sys::mlx_device_tostring(&mut s.0, d.0) } == 0 {
      f.write_str(&s.as_str())
    } else {
      write!(f, "Device({:?}, {})", self.kind, self.index)
    }
  }
}

#[cfg(test)]
mod tests {
  use super::*;

  /// The default device is the GPU exactly when the loaded libmlx has one
  /// (CUDA/Metal builds), else the CPU. Prints it so a run on the GPU
  /// machine records which device MLX picked.
  #[test]
  fn default_device_matches_availability() {
    let d = Device::default_device().unwrap();
    let gpu = Device::is_available(DeviceType::Gpu);
    println!(
      "mlx {} default device: {d} (gpu available: {gpu})",
      crate::version()
    );
    assert_eq!(
      d.kind,
      if gpu {
        DeviceType::Gpu
      } else {
        DeviceType::Cpu
      }
    );
    assert!(Device::is_available(DeviceType::Cpu));
    assert_eq!(Device::CPU.to_string(), "Device(cpu, 0)");
  }

  #[test]
  fn unavailable_device_is_an_error_not_a_crash() {
    if !Device::is_available(DeviceType::Gpu) {
      assert!(Device::GPU.set_default().is_err());
      assert!(crate::Stream::new(Device::GPU).is_err());
    }
    // (The default device is process-global in MLX, so tests never change
    // it to something invalid: other tests run concurrently.)
    Device::default_device().unwrap();
  }
}
