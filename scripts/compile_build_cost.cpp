// Host cost of building one Llama-3.2-1B-shaped decode step's graph (16
// layers, bf16, no evaluation) with MLX's C++ ops, against the same step
// with each layer's two shape-stable parts (norm, q|k|v matmul, RoPE, cache
// writes at an array offset; O matmul to the residual add) as compiled
// functions and only the cache slices and attention built per step:
// docs/performance.md, session 16. Build and run against the wheel mlxrs-sys
// installs:
//   M=~/.cache/mlxrs/mlx-cpu-0.32.4/mlx
//   g++ -O2 -std=c++20 scripts/compile_build_cost.cpp -I$M/include -L$M/lib \
//     -lmlx -Wl,-rpath,$M/lib -o /tmp/cbc && /tmp/cbc
#include <mlx/mlx.h>
#include <chrono>
#include <cstdio>
#include <algorithm>
using namespace mlx::core;
const int H=2048, HQ=32, HKV=8, D=64, I=8192, L=16, S=512;
struct Layer { array n1, wqkv, wo, n2, wgu, wd; };
std::vector<Layer> layers;
array kb[L] = {}, vb[L] = {};
std::vector<array> pre(const Layer& w, const array& x, const array& off, const array& k, const array& v){
  auto n = fast::rms_norm(x, w.n1, 1e-5);
  auto qkv = matmul(n, transpose(w.wqkv));
  qkv = transpose(reshape(qkv, {1,1,HQ+2*HKV,D}), {0,2,1,3});
  auto p = split(qkv, Shape{HQ+HKV}, 1);
  auto qk = fast::rope(p[0], D, false, 500000.f, 1.f, off);
  auto p2 = split(qk, Shape{HQ}, 1);
  auto k2 = slice_update(k, p2[1], off, {2});
  auto v2 = slice_update(v, p[1], off, {2});
  return {p2[0], k2, v2};
}
std::vector<array> post(const Layer& w, const array& a, const array& x){
  auto o = matmul(reshape(transpose(a,{0,2,1,3}),{1,1,HQ*D}), transpose(w.wo));
  auto h = x + o;
  auto n = fast::rms_norm(h, w.n2, 1e-5);
  auto gu = matmul(n, transpose(w.wgu));
  auto p = split(gu, 2, -1);
  auto act = p[0]*sigmoid(p[0])*p[1];
  auto d = matmul(act, transpose(w.wd));
  return {h + d};
}
int main(){
  for(int i=0;i<L;i++){ layers.push_back({ones({H},bfloat16), zeros({(HQ+2*HKV)*D,H},bfloat16), zeros({H,HQ*D},bfloat16), ones({H},bfloat16), zeros({2*I,H},bfloat16), zeros({H,I},bfloat16)});
    kb[i]=zeros({1,HKV,S,D},bfloat16); vb[i]=zeros({1,HKV,S,D},bfloat16); }
  std::vector<array> ev; for(auto&l:layers){ev.push_back(l.n1);ev.push_back(l.wqkv);ev.push_back(l.wo);ev.push_back(l.n2);ev.push_back(l.wgu);ev.push_back(l.wd);} for(int i=0;i<L;i++){ev.push_back(kb[i]);ev.push_back(vb[i]);} eval(ev);
  std::vector<std::function<std::vector<array>(const std::vector<array>&)>> cpre, cpost;
  for(int i=0;i<L;i++){ const Layer* w=&layers[i];
    cpre.push_back(compile(std::function<std::vector<array>(const std::vector<array>&)>([w](const std::vector<array>& in){ return pre(*w,in[0],in[1],in[2],in[3]);})));
    cpost.push_back(compile(std::function<std::vector<array>(const std::vector<array>&)>([w](const std::vector<array>& in){ return post(*w,in[0],in[1]);})));
  }
  array x0 = zeros({1,1,H},bfloat16); eval(x0);
  auto step = [&](bool comp, int offi){
    array off = array(offi, int32);
    array x = x0; std::vector<array> outs;
    for(int i=0;i<L;i++){
      std::vector<array> r = comp ? cpre[i]({x, off, kb[i], vb[i]}) : pre(layers[i], x, off, kb[i], vb[i]);
      auto ks = slice(r[1], {0,0,0,0}, {1,HKV,offi+1,D});
      auto vs = slice(r[2], {0,0,0,0}, {1,HKV,offi+1,D});
      auto a = fast::scaled_dot_product_attention(r[0], ks, vs, 0.125f, "");
      x = comp ? cpost[i]({a, x})[0] : post(layers[i], a, x)[0];
      outs.push_back(r[1]); outs.push_back(r[2]);
    }
    outs.push_back(x);
    return outs;
  };
  for(int rep=0; rep<3; rep++){
    for(int comp=0; comp<2; comp++){
      std::vector<double> t;
      for(int s=0;s<300;s++){ auto t0=std::chrono::steady_clock::now(); auto o=step(comp, 100+(s%50)); auto t1=std::chrono::steady_clock::now(); t.push_back(std::chrono::duration<double,std::micro>(t1-t0).count()); }
      std::sort(t.begin(),t.end());
      printf("%s build per step: min %.0f median %.0f us\n", comp?"compiled":"ops     ", t[0], t[t.size()/2]);
    }
  }
}
