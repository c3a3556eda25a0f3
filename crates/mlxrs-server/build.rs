// Link args (RUNPATH to libmlx, OpenBLAS) for this package's binaries/tests,
// from mlxrs-sys's `DEP_MLX_*` metadata.
fn main() {
  mlxrs_build::link_from_dep();
}
