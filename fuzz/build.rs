// Link args (RUNPATH to libmlx, OpenBLAS) for the fuzz binaries and tests,
// from mlxrs-sys's `DEP_MLX_*` metadata.
fn main() {
  mlxrs_build::link_from_dep();
}
