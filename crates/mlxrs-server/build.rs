// Link args (RUNPATH to libmlx, OpenBLAS) for this package's binaries/tests.
include!("../mlxrs-sys/build_link.rs");

fn main() {
  mlxrs_link_from_dep();
}
