// Link args (RUNPATH to libmlx, OpenBLAS) for the fuzz binaries and tests.
include!("../crates/mlxrs-sys/build_link.rs");

fn main() {
  mlxrs_link_from_dep();
}
