#include "mimi/seanet.h"

#include <ATen/ATen.h>

#include "util/error.h"

namespace mt::mimi {

int64_t SEANetConfig::hop_length() const {
  int64_t h = 1;
  for (int64_t r : ratios) h *= r;
  return h;
}

void SEANetState::reset() {
  for (auto& c : convs) c.reset();
  for (auto& c : convtrs) c.reset();
}

void SEANetState::reset_slot(int64_t b) {
  for (auto& c : convs) c.reset_slot(b);
  for (auto& c : convtrs) c.reset_slot(b);
}

ResBlockImpl::ResBlockImpl(const SEANetConfig& c, int64_t dim, int64_t dilation) {
  const int64_t hidden = dim / c.compress;
  block = register_module("block", torch::nn::ModuleList());
  block->push_back(ELU());
  c1 = StreamingConv1d(dim, hidden, c.residual_kernel_size, 1, dilation, 1, true, c.pad_mode);
  block->push_back(c1);
  block->push_back(ELU());
  c2 = StreamingConv1d(hidden, dim, 1, 1, 1, 1, true, c.pad_mode);
  block->push_back(c2);
}

SEANetImpl::SEANetImpl(const SEANetConfig& c, bool enc) : cfg(c), encoder(enc) {
  MT_CHECK(c.norm == "none", "mimi seanet: norm '", c.norm, "' (only 'none', weights folded, is supported)");
  MT_CHECK(c.activation == "ELU", "mimi seanet: activation '", c.activation, "' (only ELU is supported)");
  MT_CHECK(c.causal, "mimi seanet: only causal models are supported");
  MT_CHECK(c.true_skip, "mimi seanet: only true_skip (identity shortcuts) is supported");
  MT_CHECK(!c.ratios.empty() && c.compress > 0, "mimi seanet: ratios must not be empty");
  model = register_module("model", torch::nn::ModuleList());
  auto add_conv = [&](int64_t in, int64_t out, int64_t k, int64_t s) {
    Entry e{Kind::conv};
    e.conv = StreamingConv1d(in, out, k, s, 1, 1, true, c.pad_mode);
    model->push_back(e.conv);
    entries_.push_back(e);
    ++n_convs_;
  };
  auto add_elu = [&]() {
    model->push_back(ELU());
    entries_.push_back(Entry{Kind::elu});
  };
  auto add_res = [&](int64_t dim) {
    for (int64_t j = 0; j < c.n_residual_layers; ++j) {
      int64_t dil = 1;
      for (int64_t q = 0; q < j; ++q) dil *= c.dilation_base;
      Entry e{Kind::res};
      e.res = ResBlock(c, dim, dil);
      model->push_back(e.res);
      entries_.push_back(e);
      n_convs_ += 2;
    }
  };
  const int64_t nr = static_cast<int64_t>(c.ratios.size());
  if (encoder) {
    int64_t mult = 1;
    add_conv(c.channels, c.n_filters, c.kernel_size, 1);
    for (int64_t i = nr - 1; i >= 0; --i) {
      const int64_t r = c.ratios[i];
      add_res(mult * c.n_filters);
      add_elu();
      add_conv(mult * c.n_filters, 2 * mult * c.n_filters, 2 * r, r);
      mult *= 2;
    }
    add_elu();
    add_conv(mult * c.n_filters, c.dimension, c.last_kernel_size, 1);
  } else {
    int64_t mult = int64_t{1} << nr;
    add_conv(c.dimension, mult * c.n_filters, c.kernel_size, 1);
    for (int64_t i = 0; i < nr; ++i) {
      const int64_t r = c.ratios[i];
      add_elu();
      Entry e{Kind::convtr};
      e.convtr = StreamingConvTranspose1d(mult * c.n_filters, mult * c.n_filters / 2, 2 * r, r);
      model->push_back(e.convtr);
      entries_.push_back(e);
      ++n_convtrs_;
      add_res(mult * c.n_filters / 2);
      mult /= 2;
    }
    add_elu();
    add_conv(c.n_filters, c.channels, c.last_kernel_size, 1);
  }
}

SEANetState SEANetImpl::make_state() const {
  SEANetState s;
  s.convs.resize(n_convs_);
  s.convtrs.resize(n_convtrs_);
  return s;
}

at::Tensor SEANetImpl::forward(const at::Tensor& x) const { return run(x, nullptr); }

at::Tensor SEANetImpl::step(const at::Tensor& x, SEANetState& st) const {
  MT_CHECK(st.convs.size() == static_cast<size_t>(n_convs_) && st.convtrs.size() == static_cast<size_t>(n_convtrs_),
           "mimi seanet: state made for another model");
  return run(x, &st);
}

at::Tensor SEANetImpl::run(const at::Tensor& x, SEANetState* st) const {
  size_t ci = 0, ti = 0;
  auto conv = [&](const StreamingConv1d& c, const at::Tensor& h) {
    return st ? c->step(h, st->convs[ci++]) : c->forward(h);
  };
  at::Tensor h = x;
  for (const auto& e : entries_) {
    switch (e.kind) {
      case Kind::elu: h = at::elu(h); break;
      case Kind::conv: h = conv(e.conv, h); break;
      case Kind::convtr: h = st ? e.convtr->step(h, st->convtrs[ti++]) : e.convtr->forward(h); break;
      case Kind::res: {
        at::Tensor u = conv(e.res->c1, at::elu(h));
        u = conv(e.res->c2, at::elu(u));
        h = h + u;
        break;
      }
    }
  }
  return h;
}

}  // namespace mt::mimi
