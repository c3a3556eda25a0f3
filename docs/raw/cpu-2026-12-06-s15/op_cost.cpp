#include "mlx/mlx.h"
#include <chrono>
#include <cstdio>
namespace mx = mlx::core;
int main() {
  auto x = mx::ones({1, 2048}, mx::bfloat16);
  auto w = mx::ones({2048}, mx::bfloat16);
  mx::eval(x); mx::eval(w);
  for (int rep = 0; rep < 5; rep++) {
    auto t0 = std::chrono::steady_clock::now();
    auto y = x;
    for (int i = 0; i < 10000; i++) y = mx::add(y, x);
    auto t1 = std::chrono::steady_clock::now();
    auto z = x;
    for (int i = 0; i < 10000; i++) z = mx::fast::rms_norm(z, w, 1e-5f);
    auto t2 = std::chrono::steady_clock::now();
    auto r = x;
    for (int i = 0; i < 10000; i++) r = (i % 2 == 0) ? mx::reshape(r, {2, 1024}) : mx::reshape(r, {1, 2048});
    auto t3 = std::chrono::steady_clock::now();
    std::printf("c++ per op: add %.3f us, rms_norm %.3f us, reshape %.3f us\n",
      std::chrono::duration<double, std::micro>(t1 - t0).count() / 10000,
      std::chrono::duration<double, std::micro>(t2 - t1).count() / 10000,
      std::chrono::duration<double, std::micro>(t3 - t2).count() / 10000);
  }
}
