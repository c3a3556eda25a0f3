// Prints the body `norm_matvec.cpp` generates for one kernel configuration,
// for `check.py` (a compile check of the CUDA source on a machine without a
// GPU). Args: dtype (0 bf16, 1 f16, 2 f32) K rows resid swiglu bits group.
#include <iostream>

#include "norm_matvec.cpp"

int main(int argc, char** argv) {
  if (argc != 8) {
    std::cerr << "usage: dump_source DTYPE K ROWS RESID SWIGLU BITS GROUP\n";
    return 2;
  }
  mlxrs::Config c;
  int dt = std::atoi(argv[1]);
  c.t = dt == 0 ? mx::bfloat16 : (dt == 1 ? mx::float16 : mx::float32);
  c.k = std::atoi(argv[2]);
  c.rows = std::atoi(argv[3]);
  c.resid = std::atoi(argv[4]) != 0;
  c.swiglu = std::atoi(argv[5]) != 0;
  c.bits = std::atoi(argv[6]);
  c.group = std::atoi(argv[7]);
  c.npt = c.k % 128 == 0 ? 4 : 2;  // an aligned weight, as the library picks
  float eps = 1e-5f;
  std::memcpy(&c.eps_bits, &eps, sizeof(eps));
  std::cout << mlxrs::body(c);
  return 0;
}
