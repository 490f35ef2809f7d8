#include "nn/attention_step.h"

#include <ATen/Parallel.h>
#include <c10/core/GradMode.h>

#include <cmath>
#include <limits>
#include <vector>

#include "util/error.h"
#include "util/fused.h"
#include "util/simd.h"

namespace mt::nn {

namespace {
bool cpu_float_contiguous(const at::Tensor& t) {
  return t.defined() && t.device().is_cpu() && t.scalar_type() == at::kFloat && t.is_contiguous();
}
}  // namespace

bool fused_attention_step_applies(const at::Tensor& qkv, const KVCache* cache) {
  if (!util::fused_kernels_enabled() || !util::cpu_has_avx2_fma() || !cache) return false;
  if (!cpu_float_contiguous(qkv) || qkv.dim() != 3 || qkv.size(1) != 1) return false;
  if (!cpu_float_contiguous(cache->k) || !cpu_float_contiguous(cache->v)) return false;
  if (c10::GradMode::is_enabled() && (qkv.requires_grad() || cache->k.requires_grad() || cache->v.requires_grad()))
    return false;
  return true;
}

at::Tensor fused_attention_step(const at::Tensor& qkv, const at::Tensor& offsets, int64_t offset_cpu, KVCache& cache,
                                const FusedStepGeometry& g) {
  const int64_t B = qkv.size(0), H = g.heads, Dh = g.head_dim, cap = cache.capacity;
  MT_CHECK(qkv.dim() == 3 && qkv.size(1) == 1 && qkv.size(2) == 3 * H * Dh, "fused attention step: qkv of shape ",
           shape_str(qkv.sizes().vec()), ", expected [", B, ", 1, ", 3 * H * Dh, "]");
  MT_CHECK(cache.k.dim() == 4 && cache.k.size(0) == B && cache.k.size(1) == H && cache.k.size(2) == cap &&
               cache.k.size(3) == Dh && cache.v.sizes() == cache.k.sizes(),
           "fused attention step: KV cache of shape ", shape_str(cache.k.sizes().vec()), ", expected [", B, ", ", H,
           ", ", cap, ", ", Dh, "]");
  MT_CHECK(Dh % 2 == 0 || !g.rope, "RoPE needs an even head dimension, got ", Dh);
  const at::Tensor offs = offsets.to(at::kLong).cpu().contiguous();
  MT_CHECK(offs.numel() == B, "fused attention step: ", offs.numel(), " offsets for a batch of ", B);
  const int64_t* off = offs.const_data_ptr<int64_t>();
  const int64_t used = std::min(cap, offset_cpu + 1);  // slots that can hold anything until the ring wraps

  // Rotation of each batch slot's position, in float32 as apply_rope computes it.
  const int64_t P = g.rope ? Dh / 2 : 0;
  std::vector<float> rc(static_cast<size_t>(B * P)), rs(static_cast<size_t>(B * P));
  if (g.rope) {
    const float c = static_cast<float>(-std::log(g.max_period) * 2.0 / static_cast<double>(Dh));
    const bool yarn = g.yarn && g.yarn->on();
    const float msc = yarn ? static_cast<float>(g.yarn->mscale()) : 1.f;
    for (int64_t i = 0; i < P; ++i) {
      float f = std::exp(static_cast<float>(i) * c);
      if (yarn) {
        const float r = f * static_cast<float>(static_cast<double>(g.yarn->original_context) / (2.0 * M_PI));
        float ramp =
            (r - static_cast<float>(g.yarn->beta_slow)) / static_cast<float>(g.yarn->beta_fast - g.yarn->beta_slow);
        ramp = std::min(1.f, std::max(0.f, ramp));
        f = (1.f - ramp) * f / static_cast<float>(g.yarn->factor) + ramp * f;
      }
      for (int64_t b = 0; b < B; ++b) {
        const float ang = f * static_cast<float>(off[b]);
        rc[b * P + i] = std::cos(ang) * msc;
        rs[b * P + i] = std::sin(ang) * msc;
      }
    }
  }

  at::Tensor out = at::empty({B, 1, H * Dh}, qkv.options());
  const float* src = qkv.const_data_ptr<float>();
  float* K = cache.k.mutable_data_ptr<float>();
  float* V = cache.v.mutable_data_ptr<float>();
  float* O = out.mutable_data_ptr<float>();
  const float scale = static_cast<float>(1.0 / std::sqrt(static_cast<double>(Dh)));
  const int64_t ctx = g.context ? *g.context : std::numeric_limits<int64_t>::max();
  const int64_t grain = std::max<int64_t>(1, (int64_t{1} << 14) / std::max<int64_t>(1, used * Dh));
  at::parallel_for(0, B * H, grain, [&](int64_t lo, int64_t hi) {
    std::vector<float> q(static_cast<size_t>(Dh)), sc(static_cast<size_t>(used));
    for (int64_t bh = lo; bh < hi; ++bh) {
      const int64_t b = bh / H, h = bh % H, pos_q = off[b];
      const float* qs = src + b * 3 * H * Dh + h * Dh;
      const float* ks = qs + H * Dh;
      const float* vs = qs + 2 * H * Dh;
      float* kring = K + bh * cap * Dh;
      float* vring = V + bh * cap * Dh;
      const int64_t slot = pos_q % cap;
      float* kd = kring + slot * Dh;
      if (g.rope) {
        const float* c = rc.data() + b * P;
        const float* s = rs.data() + b * P;
        for (int64_t i = 0; i < P; ++i) {
          const float qr = qs[2 * i], qi = qs[2 * i + 1], kr = ks[2 * i], ki = ks[2 * i + 1];
          q[2 * i] = qr * c[i] - qi * s[i];
          q[2 * i + 1] = qr * s[i] + qi * c[i];
          kd[2 * i] = kr * c[i] - ki * s[i];
          kd[2 * i + 1] = kr * s[i] + ki * c[i];
        }
      } else {
        std::copy(qs, qs + Dh, q.begin());
        std::copy(ks, ks + Dh, kd);
      }
      std::copy(vs, vs + Dh, vring + slot * Dh);

      // Absolute position of each slot (-1: never written), as the ring's bookkeeping in forward.
      float mx = -std::numeric_limits<float>::infinity();
      for (int64_t j = 0; j < used; ++j) {
        const int64_t delta = j - slot;
        int64_t pos_k = delta <= 0 ? pos_q + delta : pos_q + delta - cap;
        if (j >= pos_q + 1) pos_k = -1;
        const int64_t d = pos_q - pos_k;
        const bool allowed = pos_k >= 0 && d >= 0 && d < ctx;
        sc[j] =
            allowed ? util::simd::dot(q.data(), kring + j * Dh, Dh) * scale : -std::numeric_limits<float>::infinity();
        mx = std::max(mx, sc[j]);
      }
      // The current slot is always allowed, so mx is finite.
      float sum = 0.f;
      for (int64_t j = 0; j < used; ++j) {
        sc[j] = std::exp(sc[j] - mx);
        sum += sc[j];
      }
      float* o = O + b * H * Dh + h * Dh;
      std::fill(o, o + Dh, 0.f);
      const float inv = 1.f / sum;
      for (int64_t j = 0; j < used; ++j)
        if (sc[j] != 0.f) util::simd::axpy(sc[j] * inv, vring + j * Dh, o, Dh);
    }
  });
  return out;
}

}  // namespace mt::nn
